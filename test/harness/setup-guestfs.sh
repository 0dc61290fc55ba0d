#!/usr/bin/env bash
# Install virt-sparsify (guestfs-tools) and a kernel for its appliance, for the tests of
# RESTIC_SPARSIFY / RSYNC_SPARSIFY on a Debian 12 machine (run as root). libguestfs boots a small
# VM from the host's kernel: a container without one in /boot gets Debian's, which needs nothing
# but its files (it is never booted as the host's kernel). Idempotent.
set -euo pipefail

PACKAGES=(guestfs-tools linux-image-amd64)

log() { printf 'setup-guestfs: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root"
  exit 1
fi

apt_install "${PACKAGES[@]}"
# libguestfs reads the kernel as the user who runs it (oneadmin): Debian installs it 0644, some
# images tighten that.
chmod 0644 /boot/vmlinuz-* 2>/dev/null || true
log "done"
