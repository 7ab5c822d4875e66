// Run `fn` only after the user has stopped typing for `wait` milliseconds.
// Every new keystroke cancels the pending call and starts the timer again, so a search box
// sends one request per pause instead of one per character.
export function debounce(fn, wait = 300) {
  let timer = null;
  return function (...args) {
    clearTimeout(timer);
    timer = setTimeout(() => fn.apply(this, args), wait);
  };
}

// Run `fn` at most once every `interval` milliseconds while events keep arriving
// (scrolling, resizing a window, dragging).
export function throttle(fn, interval = 100) {
  let last = 0;
  return function (...args) {
    const now = Date.now();
    if (now - last >= interval) {
      last = now;
      fn.apply(this, args);
    }
  };
}

const input = document.querySelector("#search");
input.addEventListener("input", debounce((e) => suggest(e.target.value), 250));
