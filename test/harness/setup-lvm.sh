#!/usr/bin/env bash
# Install the LVM tools the LVM storage side's tests run for real: lvm2 (lvs over volume group
# metadata restored onto a loop device) and thin-provisioning-tools (thin_restore, thin_delta).
# These machines have no device-mapper, so no volume is ever activated; see the README.
# Idempotent (run as root).
set -euo pipefail

log() { printf 'setup-lvm: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root"
  exit 1
fi
apt_install lvm2 thin-provisioning-tools
