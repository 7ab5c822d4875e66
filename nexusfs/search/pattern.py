"""Glob patterns over store paths, with Python ``glob(recursive=True)`` semantics.

* ``*`` and ``?`` match within one path component; ``[...]`` is a character
  class (``[!...]`` negates); none of them match ``/``.
* A ``**`` component matches zero or more whole components.
* Names starting with ``.`` are matched only by components that start with ``.``
  (as the shell and Python's glob do), and ``**`` never enters them.
* A trailing ``/`` matches directories only.
* Patterns are relative to the directory searched; a leading ``/`` is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MAGIC = re.compile(r"[*?\[]")


def has_magic(s: str) -> bool:
    return _MAGIC.search(s) is not None


def _translate_component(comp: str) -> str:
    out = []
    i, n = 0, len(comp)
    while i < n:
        c = comp[i]
        i += 1
        if c == "*":
            while i < n and comp[i] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i
            if j < n and comp[j] in "!^":
                j += 1
            if j < n and comp[j] == "]":
                j += 1
            while j < n and comp[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape("["))
                continue
            body = comp[i:j]
            i = j + 1
            neg = body[:1] in ("!", "^")
            if neg:
                body = body[1:]
            body = body.replace("\\", "\\\\")
            # Python's glob never matches '/' with a class
            out.append(f"(?!/)[{'^' if neg else ''}{body.replace('[', chr(92) + '[')}]")
        else:
            out.append(re.escape(c))
    prefix = "" if comp.startswith(".") else r"(?!\.)"
    return prefix + "".join(out)


@dataclass(frozen=True)
class GlobPattern:
    pattern: str
    regex: re.Pattern[str]
    #: leading components without wildcards: the walk can start there
    literal_prefix: tuple[str, ...]
    dirs_only: bool
    #: False when the pattern has a fixed depth (no ``**``)
    recursive: bool
    depth: int
    #: the walk must enter hidden directories
    hidden: bool
    #: 'a/**' also matches 'a' itself, but only a directory 'a' (None: no trailing '**')
    dir_regex: re.Pattern[str] | None = None
    #: what the name of a directory at depth i must match for the walk to enter it, for the
    #: components before the first ``**`` (beyond them, any directory may hold matches)
    dir_components: tuple[re.Pattern[str], ...] = ()

    def may_enter(self, depth: int, name: str) -> bool:
        """Can a directory ``name`` at ``depth`` (0: directly in the searched directory)
        contain matches?"""
        if depth < len(self.dir_components):
            return self.dir_components[depth].fullmatch(name) is not None
        return self.recursive or depth + 1 < self.depth

    def match(self, relpath: str, is_dir: bool = False) -> bool:
        if self.dirs_only and not is_dir:
            return False
        if self.regex.fullmatch(relpath) is not None:
            return True
        return is_dir and self.dir_regex is not None and self.dir_regex.fullmatch(relpath) is not None


def compile_glob(pattern: str) -> GlobPattern:
    if not pattern or pattern.strip("/") == "":
        raise ValueError("empty glob pattern")
    dirs_only = pattern.endswith("/")
    comps = [c for c in pattern.strip("/").split("/") if c not in ("", ".")]
    # '**/**' means the same as '**'
    comps = [c for k, c in enumerate(comps) if not (c == "**" and k and comps[k - 1] == "**")]
    parts: list[str] = []
    last = len(comps) - 1
    for k, comp in enumerate(comps):
        if comp == "**":
            if k == 0 and k == last:
                parts.append(r"(?!\.)[^/]+(?:/(?!\.)[^/]+)*")
            elif k == 0:
                parts.append(r"(?:(?!\.)[^/]+/)*")
            elif k == last:  # one or more components; none: see dir_regex
                parts.append(r"(?:/(?!\.)[^/]+)+")
            else:  # 'a/**/b': the separator after 'a', then zero or more 'x/'
                parts.append(r"/(?:(?!\.)[^/]+/)*")
        else:
            sep = "" if k == 0 or comps[k - 1] == "**" else "/"
            parts.append(sep + _translate_component(comp))
    regex = re.compile("".join(parts), re.DOTALL)
    dir_regex = None
    if last > 0 and comps[last] == "**":
        dir_regex = re.compile("".join(parts[:-1]), re.DOTALL)
    dir_components: list[re.Pattern[str]] = []
    for comp in comps[:-1]:
        if comp == "**":
            break
        dir_components.append(re.compile(_translate_component(comp), re.DOTALL))
    prefix: list[str] = []
    for comp in comps[:-1]:
        if has_magic(comp) or comp == "**":
            break
        prefix.append(comp)
    return GlobPattern(
        pattern=pattern,
        regex=regex,
        literal_prefix=tuple(prefix),
        dirs_only=dirs_only,
        recursive="**" in comps,
        depth=len(comps),
        hidden=any(c.startswith(".") for c in comps),
        dir_regex=dir_regex,
        dir_components=tuple(dir_components),
    )
