#!/usr/bin/env bash
# Install the nexus command outside the checkout (pipx-style), where mount(8), /etc/fstab and
# systemd find it. What goes where:
#   PREFIX/lib/nexusfs/          its own virtual environment: nexusfs and what mounting needs
#   PREFIX/bin/nexus             the command (a symbolic link into that environment)
#   /sbin/mount.fuse.nexus       as root: the mount(8) helper (mount(8) looks for helpers only
#                                in /sbin), which runs PREFIX/bin/nexus
#   PREFIX/share/systemd/user/nexus-mount.service
#                                the systemd user unit (keeps ~/nexus mounted), which runs
#                                PREFIX/bin/nexus
# PREFIX is /usr/local as root, else ~/.local: an ordinary user installs for themselves.
# The checkout is not needed afterwards; running this again upgrades in place.
#
#   packaging/install.sh [--prefix DIR] [--no-mount-helper]      (= ./run.sh install ...)
#   packaging/install.sh --uninstall [--prefix DIR]
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")

say() { printf 'nexusfs: %s\n' "$*" >&2; }
usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0" >&2; }

prefix="" helper=yes action=install
while [[ $# -gt 0 ]]; do
  case $1 in
    --prefix=*) prefix=${1#*=} ;;
    --prefix) [[ $# -ge 2 ]] || { say "install: --prefix needs a directory"; exit 2; }
              prefix=$2; shift ;;
    --no-mount-helper) helper=no ;;
    --uninstall) action=uninstall ;;
    -h|--help) usage; exit 0 ;;
    *) say "install: unknown option '$1'"; usage; exit 2 ;;
  esac
  shift
done
if [[ -z $prefix ]]; then
  if [[ $(id -u) -eq 0 ]]; then prefix=/usr/local; else prefix=$HOME/.local; fi
fi
prefix=$(realpath -m -- "$prefix") # the helper and the unit name absolute paths
if [[ ! $prefix =~ ^[A-Za-z0-9/._+-]+$ ]]; then
  say "install: the prefix may hold only letters, digits and / . _ + - (it goes into a unit file): $prefix"
  exit 2
fi
venv=$prefix/lib/nexusfs
command=$prefix/bin/nexus
unit=$prefix/share/systemd/user/nexus-mount.service
mount_helper=/sbin/mount.fuse.nexus
manifest=$venv/installed-files # what the installation put outside $venv, for --uninstall
[[ $(id -u) -eq 0 ]] || helper=no # only root can add a mount(8) helper

ours() { # ours FILE: was FILE written by this installation (it names our command)?
  grep -qsxF -e "installed_nexus=$command" -e "ExecStart=$command mount %h/nexus" "$1" ||
    [[ $1 == "$command" && $(readlink -- "$1") == "$venv/bin/nexus" ]]
}

do_uninstall() {
  if [[ ! -f $manifest ]]; then
    say "no nexusfs installation in $prefix (nothing to remove)"
    exit 1
  fi
  local f
  while IFS= read -r f; do
    if ours "$f"; then
      rm -f -- "$f"
    elif [[ -e $f || -L $f ]]; then
      say "left $f: another installation has replaced it"
    fi
  done <"$manifest"
  rm -rf -- "$venv"
  say "removed nexusfs from $prefix"
}

install_file() { # install_file MODE SOURCE DEST SED_SCRIPT: a copy with our paths filled in
  local mode=$1
  shift
  mkdir -p -- "$(dirname "$2")"
  sed -e "$3" "$1" >"$2.tmp.$$"
  chmod "$mode" "$2.tmp.$$"
  mv -f -- "$2.tmp.$$" "$2"
  printf '%s\n' "$2" >>"$manifest"
}

do_install() {
  "$here/install-deps.sh"
  # build from a copy: pip builds in the source tree, which may be read-only or someone else's
  build_dir=$(mktemp -d)
  trap 'rm -rf "$build_dir"' EXIT
  tar -C "$here/.." --exclude-vcs --exclude=./.venv --exclude=./tests --exclude=./build \
    --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ --exclude=./bench-results \
    -cf - . | tar -C "$build_dir" -xf -
  mkdir -p -- "$venv"
  "$here/venv-install.sh" "$venv" "$build_dir" mount
  : >"$manifest"
  mkdir -p -- "$prefix/bin"
  ln -sfn -- "$venv/bin/nexus" "$command"
  printf '%s\n' "$command" >>"$manifest"
  say "installed nexus $("$command" --version | awk '{print $NF}') in $venv"
  say "  command:      $command"
  if [[ $helper == yes ]]; then
    install_file 755 "$here/mount.fuse.nexus" "$mount_helper" "s|^installed_nexus=.*|installed_nexus=$command|"
    say "  mount helper: $mount_helper (mount -t fuse.nexus STORE_DIR MOUNTPOINT; in /etc/fstab:"
    say "                STORE_DIR MOUNTPOINT fuse.nexus defaults,_netdev,allow_other 0 0)"
  fi
  install_file 644 "$here/nexus-mount.service" "$unit" "s|^ExecStart=[^ ]*/nexus |ExecStart=$command |"
  say "  systemd unit: $unit (systemctl --user enable --now nexus-mount)"
  case ":$PATH:" in
    *":$prefix/bin:"*) ;;
    *) say "$prefix/bin is not on your PATH: add it (e.g. in ~/.profile) to type 'nexus'" ;;
  esac
}

"do_$action"
