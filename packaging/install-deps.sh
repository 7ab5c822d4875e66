#!/usr/bin/env bash
# Install the Debian/Ubuntu packages nexusfs needs.
#   packaging/install-deps.sh          what `nexus mount` needs (FUSE, a compiler for pyfuse3)
#   packaging/install-deps.sh --test   also the tools the test suite runs on the mount
#   packaging/install-deps.sh --bench  also what the benchmarks run beside the mount (fio)
# As root it installs them with apt-get; otherwise it uses `sudo -n` if that works,
# and else prints the one command to run. Elsewhere (no dpkg) it checks that what they
# provide is there, and fails naming the missing ones.
set -euo pipefail

pkgs=(python3 python3-venv python3-dev gcc pkg-config fuse3 libfuse3-dev)
if [[ "${1:-}" == "--test" || "${1:-}" == "--bench" ]]; then
  pkgs+=(git rsync tar make attr acl ripgrep psmisc procps util-linux strace)
fi
if [[ "${1:-}" == "--bench" ]]; then
  pkgs+=(fio)
fi

# elsewhere: whether each package is there is judged by what it provides (a command, a
# library pkg-config knows, a Python module); nothing missing is fine, anything missing fails
provides() { # provides PACKAGE: true if what PACKAGE provides is here
  case "$1" in
    python3) command -v python3 ;;
    python3-venv) python3 -c 'import venv, ensurepip' ;;
    python3-dev) python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ;;
    pkg-config) command -v pkg-config ;;
    fuse3) command -v fusermount3 ;;
    libfuse3-dev) pkg-config --exists fuse3 ;;
    attr) command -v getfattr && command -v setfattr ;;
    acl) command -v getfacl && command -v setfacl ;;
    ripgrep) command -v rg ;;
    psmisc) command -v fuser ;;
    procps) command -v ps && command -v pkill ;;
    util-linux) command -v mount && command -v script ;;
    *) command -v "$1" ;;
  esac
} >/dev/null 2>&1

if ! command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for p in "${pkgs[@]}"; do
    provides "$p" || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && exit 0
  echo "nexusfs: not a Debian/Ubuntu system and these are missing; install them (or your distribution's equivalents), then run this again: ${missing[*]}" >&2
  exit 1
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "nexusfs: installing system packages: ${missing[*]}" >&2
if [[ $(id -u) -eq 0 ]]; then
  apt=(apt-get)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  apt=(sudo -n apt-get)
else
  echo "nexusfs: missing system packages; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${apt[@]}" update -q >/dev/null
"${apt[@]}" install -y -q --no-install-recommends "${missing[@]}" >/dev/null
