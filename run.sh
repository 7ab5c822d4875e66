#!/usr/bin/env bash
# nexusfs front door. Each command first installs whatever is missing
# (system packages via packaging/install-deps.sh, Python packages into ./.venv).
#
#   ./run.sh mount [MOUNTPOINT] [nexus mount options]
#        mount a zero-configuration store (in $NEXUS_HOME or ~/.local/share/nexus)
#        at MOUNTPOINT (default ~/nexus) in the background; `./run.sh umount` undoes it
#   ./run.sh umount [MOUNTPOINT]
#   ./run.sh test [pytest arguments]
#        install everything the tests need and run the whole test suite
#   ./run.sh bench
#        run the benchmark suite (writes bench-results/: markdown tables and PNG charts)
#   ./run.sh setup [--test]
#        only install
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
VENV=.venv

setup() {
  packaging/install-deps.sh "$@"
  if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV"
  fi
  local stamp=$VENV/.nexusfs-installed
  if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "nexusfs: installing Python packages into $VENV" >&2
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
           "$VENV/bin/python" -m pip install -q -e '.[mount,test]'; } >"$VENV/install.log" 2>&1; then
      tail -n 30 "$VENV/install.log" >&2
      echo "nexusfs: installing Python packages failed (full log: $VENV/install.log)" >&2
      exit 1
    fi
    touch "$stamp"
  fi
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
    exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  bench)
    setup --test
    "$VENV/bin/python" -m pip install -q -e '.[bench]'
    exec "$VENV/bin/python" tests/bench/run_all.py "$@"
    ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    [[ $cmd == help || $cmd == -h || $cmd == --help ]] || exit 2
    ;;
esac
