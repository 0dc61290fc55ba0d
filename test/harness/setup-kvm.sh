#!/usr/bin/env bash
# Install what the KVM host-side backup tests need on a Debian 12 machine (run as root):
# libvirt (monolithic libvirtd), QEMU, qemu-img/qemu-nbd, libnbd tools and libvirt-dev for the
# cgo host binary. Idempotent: on a set-up machine it only checks and exits quickly.
set -euo pipefail

PACKAGES=(
  libvirt-daemon-system libvirt-clients libvirt-dev qemu-system-x86 qemu-utils
  nbdkit libnbd-bin pkg-config gcc libc6-dev
)

log() { printf 'setup-kvm: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root"
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  # Keep package scripts from starting daemons (there is no init system to own them).
  tmp_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    tmp_policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$tmp_policy"
    chmod 0755 "$tmp_policy"
    trap 'rm -f -- "$tmp_policy"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [[ -n $tmp_policy ]]; then
    rm -f -- "$tmp_policy"
    trap - EXIT
  fi
else
  log "packages already installed"
fi

# oneadmin runs the drivers and talks to qemu:///system, as on an OpenNebula KVM node.
if getent passwd oneadmin >/dev/null; then
  for g in libvirt kvm disk; do
    if getent group "$g" >/dev/null && ! id -nG oneadmin | tr ' ' '\n' | grep -qx "$g"; then
      usermod -a -G "$g" oneadmin
    fi
  done
fi
log "done"
