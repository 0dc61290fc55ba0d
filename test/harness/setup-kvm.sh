#!/usr/bin/env bash
# Install what the KVM host-side backup tests need on a Debian 12 machine (run as root):
# libvirt (monolithic libvirtd), QEMU with its rbd block driver (qemu-block-extra),
# qemu-img/qemu-nbd, libnbd tools, and libvirt-dev + librbd-dev/librados-dev for the cgo host
# binary (it links libvirt and librbd). Idempotent: on a set-up machine it only checks and exits quickly.
set -euo pipefail

PACKAGES=(
  libvirt-daemon-system libvirt-clients libvirt-dev qemu-system-x86 qemu-utils qemu-block-extra
  librbd-dev librados-dev
  nbdkit libnbd-bin pkg-config gcc libc6-dev
)

log() { printf 'setup-kvm: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root"
  exit 1
fi

apt_install "${PACKAGES[@]}"

# oneadmin runs the drivers and talks to qemu:///system, as on an OpenNebula KVM node.
if getent passwd oneadmin >/dev/null; then
  for g in libvirt kvm disk; do
    if getent group "$g" >/dev/null && ! id -nG oneadmin | tr ' ' '\n' | grep -qx "$g"; then
      usermod -a -G "$g" oneadmin
    fi
  done
fi

# go-ceph is built for the Ceph release whose librbd is installed, named by a build tag (Debian
# 12: Pacific). The Makefile passes it; recording it in the Go environment of the user running
# this script lets plain `go build ./...`, `go vet ./...` and `go test ./...` work as well.
GO=$(command -v go || echo /usr/local/go/bin/go)
if [[ -x $GO ]] && dpkg-query -W -f='${Version}' librbd-dev 2>/dev/null | grep -q '^16\.'; then
  case " $("$GO" env GOFLAGS) " in
    *-tags=pacific*) ;;
    *) "$GO" env -w GOFLAGS="$("$GO" env GOFLAGS) -tags=pacific" && log "go env GOFLAGS: -tags=pacific (Ceph 16 librbd)" ;;
  esac
fi
log "done"
