#!/usr/bin/env bash
# Install the Debian/Ubuntu packages nexusfs needs.
#   packaging/install-deps.sh          what `nexus mount` needs (FUSE, a compiler for pyfuse3)
#   packaging/install-deps.sh --test   also the tools the test suite runs on the mount
# As root it installs them with apt-get; otherwise it uses `sudo -n` if that works,
# and else prints the one command to run.
set -euo pipefail

pkgs=(python3 python3-venv python3-dev gcc pkg-config fuse3 libfuse3-dev)
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(git rsync tar make attr acl ripgrep psmisc procps util-linux strace)
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "nexusfs: not a Debian/Ubuntu system; install these (or your distribution's equivalents): ${pkgs[*]}" >&2
  exit 0
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
