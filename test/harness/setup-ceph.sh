#!/usr/bin/env bash
# Install what the Ceph (RBD) and S3 tests need on a Debian 12 machine (run as root): the daemons
# of a single-node Ceph Pacific (mon, mgr, OSD, radosgw) that ceph.sh starts by hand, the client
# tools (ceph, rbd, radosgw-admin, from ceph-common) and librados/librbd headers for go-ceph's cgo
# build. Idempotent: on a set-up machine it only checks and exits quickly.
set -euo pipefail

# ceph-common carries the ceph/rbd CLIs and the ceph-authtool that ceph.sh uses; curl is how
# ceph.sh checks that radosgw answers; gcc, libc6-dev and pkg-config build go-ceph (cgo).
PACKAGES=(
  ceph ceph-mon ceph-osd ceph-mgr ceph-common radosgw
  librados-dev librbd-dev curl gcc libc6-dev pkg-config
)

log() { printf 'setup-ceph: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root"
  exit 1
fi

apt_install "${PACKAGES[@]}"
log "done"
