#!/usr/bin/env bash
# nexusfs front door. Each command first installs what it needs and is missing (system
# packages via packaging/install-deps.sh, Python packages into ./.venv), showing progress.
#
#   ./run.sh mount [MOUNTPOINT] [nexus mount options]
#        mount a zero-configuration store (in $NEXUS_HOME or ~/.local/share/nexus)
#        at MOUNTPOINT (default ~/nexus) in the background; `./run.sh umount` undoes it
#   ./run.sh umount [MOUNTPOINT]
#   ./run.sh test [pytest arguments]
#        install everything the tests need and run the whole test suite
#   ./run.sh bench
#        run the benchmark suite (writes bench-results/: markdown tables and PNG charts)
#   ./run.sh install [--prefix DIR] [--no-mount-helper]
#        install the nexus command for the system (as root: /usr/local, the mount(8)
#        helper for fstab, a systemd user unit) or for yourself (~/.local); see
#        packaging/install.sh (--uninstall removes it again)
#   ./run.sh setup [--test]
#        only install into ./.venv (what mounting needs; --test: also the test tools)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
VENV=.venv

usage() { # the comment above, without its '#'s
  awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"
}

installed() { # installed LEVEL: are LEVEL's packages (or a superset's) in .venv, up to date?
  local level
  for level in "$@"; do
    [[ -f $VENV/.installed-$level && ! pyproject.toml -nt $VENV/.installed-$level ]] && return 0
  done
  return 1
}

setup() { # setup [--test]: the system packages, then what mounting (or testing) needs
  local level=mount extras=mount also=(test)
  if [[ ${1:-} == --test ]]; then
    level=test extras=mount,test also=()
  fi
  packaging/install-deps.sh "$@"
  installed "$level" "${also[@]}" && return 0
  # --no-compile: Python compiles each module on its first import instead of all of them now
  packaging/venv-install.sh --editable --no-compile "$VENV" . "$extras"
  touch "$VENV/.installed-$level"
}

cmd=${1:-help}
shift || true
case "$cmd" in
  setup)
    setup "$@"
    ;;
  mount)
    setup
    mp=${1:-$HOME/nexus}
    shift || true
    mkdir -p "$mp"
    exec "$VENV/bin/nexus" mount --background "$mp" "$@"
    ;;
  umount|unmount)
    exec "$VENV/bin/nexus" umount "${1:-$HOME/nexus}"
    ;;
  test)
    setup --test
    # CI mode: set-up installed every part the tests need, so a missing one fails (tests/needs.py)
    CI=${CI:-1} exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  bench)
    setup --test
    packaging/install-deps.sh --bench  # fio, run beside the benchmarks' own figures
    installed bench || { packaging/venv-install.sh --editable --no-compile "$VENV" . bench &&
                         touch "$VENV/.installed-bench"; }
    exec "$VENV/bin/python" tests/bench/run_all.py "$@"
    ;;
  install)
    exec packaging/install.sh "$@"
    ;;
  help|-h|--help)
    usage
    ;;
  *)
    echo "run.sh: unknown command '$cmd'" >&2
    usage >&2
    exit 2
    ;;
esac
