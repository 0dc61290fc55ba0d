#!/usr/bin/env bash
# Install what the LXC host-side backup tests need on a Debian 12 machine (run as root): the lxc
# tools, a static busybox for the containers' root file systems, and mkfs for their disk
# images. Idempotent: on a set-up machine it only checks and exits quickly.
set -euo pipefail

PACKAGES=(lxc busybox-static e2fsprogs util-linux mount strace sudo)

log() { printf 'setup-lxc: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root"
  exit 1
fi

apt_install "${PACKAGES[@]}"
# OpenNebula's LXC driver keeps container configs and mounts here.
install -d -m 0755 /var/lib/lxc-one
# The host side runs as oneadmin and asks for the containers (root's) through sudo, as OpenNebula's
# LXC node package lets oneadmin run the lxc tools; the freeze commands back FS_FREEZE.
install -d -m 0750 /etc/sudoers.d
cat >/etc/sudoers.d/onebackup-lxc.new <<'EOF_SUDO'
Defaults:oneadmin !requiretty
oneadmin ALL=(ALL) NOPASSWD: /usr/bin/lxc-info, /usr/bin/lxc-freeze, /usr/bin/lxc-unfreeze, /usr/sbin/fsfreeze
EOF_SUDO
chmod 0440 /etc/sudoers.d/onebackup-lxc.new
visudo -cq -f /etc/sudoers.d/onebackup-lxc.new
mv /etc/sudoers.d/onebackup-lxc.new /etc/sudoers.d/onebackup-lxc
log "done"
