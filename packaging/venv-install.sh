#!/usr/bin/env bash
# Install nexusfs with some of its extras into a virtual environment, showing progress.
#
#   packaging/venv-install.sh [--editable] [--no-compile] VENV PROJECT_DIR EXTRAS
#
# VENV is created if it does not exist (with the system's python3). EXTRAS is a
# comma-separated list of the project's extras ("mount", "mount,test"). pip's whole output
# goes to VENV/install.log; stderr gets one line per step (creating the environment,
# building a package, installing), and on a terminal also a status line that follows pip
# (each package it collects and downloads).
#
# C extensions that PyPI has only as source (pyfuse3, compiled against libfuse3) are built
# without debug information (-g0; the optimisation level is Python's own): pyfuse3 then
# compiles in about 10 s instead of 25 s, and its wheel is 0.5 MB instead of 1.7 MB.
set -euo pipefail

editable=()
compile=(--compile)
while [[ ${1:-} == --* ]]; do
  case $1 in
    --editable) editable=(-e) ;;
    --no-compile) compile=(--no-compile) ;;
    *) echo "venv-install.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ $# -ne 3 ]]; then
  echo "usage: venv-install.sh [--editable] [--no-compile] VENV PROJECT_DIR EXTRAS" >&2
  exit 2
fi
venv=$1 project=$2 extras=$3
log=$venv/install.log
started=$SECONDS

say() { # one line of progress on stderr (clears a status line first)
  [[ -t 2 ]] && printf '\r\033[K' >&2
  printf 'nexusfs: %s\n' "$*" >&2
}

status() { # a transient status line: on a terminal only, overwritten by the next one
  [[ -t 2 ]] && printf '\r\033[Knexusfs:   %.70s' "$*" >&2
  return 0
}

follow_pip() { # pip's output -> the log, and a status line for what it is doing
  local line count
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$log"
    case $line in
      Collecting\ *) status "collecting ${line#Collecting }" ;;
      *Downloading\ *) line=${line#*Downloading }; status "downloading ${line%%-[0-9]*} ${line##* (}" ;;
      *"Building wheel for "*finished*) ;;
      *"Building wheel for "*) line=${line#*Building wheel for }; say "  building ${line%% *}" ;;
      "Installing collected packages: pip") ;; # announced as "upgrading pip"
      "Installing collected packages: "*)
        count=$(($(tr -cd , <<<"${line#*: }" | wc -c) + 1))
        say "  installing $count package$([[ $count == 1 ]] || echo s)" ;;
    esac
  done
}

pip_step() { # pip_step ARGS...: run pip, its output followed; fails with the log's tail
  if ! "$venv/bin/python" -m pip "$@" --progress-bar off 2>&1 | follow_pip; then
    say "installing Python packages failed; the end of $log:"
    tail -n 25 "$log" >&2
    exit 1
  fi
}

fresh=no
if [[ ! -x $venv/bin/python ]]; then
  say "creating the virtual environment $venv"
  python3 -m venv "$venv"
  fresh=yes
fi
: >"$log"
say "installing Python packages ($extras) into $venv (log: $log)"
if [[ $fresh == yes ]]; then
  # the pip that python3 bundles may be old; a current one installs the rest faster than it
  # takes to fetch it (Debian 12's pip 23.2: 10.5-12.3 s for what pip 26 does in 6.9-8.5 s)
  say "  upgrading pip"
  pip_step install --upgrade pip
fi

export CFLAGS="-g0${CFLAGS:+ $CFLAGS}"
pip_step install "${compile[@]}" "${editable[@]}" "$project[$extras]"
say "Python packages installed ($((SECONDS - started)) s)"
