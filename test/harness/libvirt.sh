#!/usr/bin/env bash
# Start or stop a libvirtd for the KVM tests (no systemd here). QEMU runs as oneadmin with
# dynamic_ownership off, as on an OpenNebula KVM node.
#   libvirt.sh start    configure qemu.conf (once) and start libvirtd -d; wait until it answers
#   libvirt.sh stop     destroy every domain named onebackup-test-*, stop the libvirtd we started
set -euo pipefail

CONF=/etc/libvirt/qemu.conf
DCONF=/etc/libvirt/libvirtd.conf
MARK='# onebackup test settings'
PIDFILE=/run/libvirtd.pid
URI=qemu:///system

log() { printf 'libvirt.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"

answers() { timeout 20 virsh -c "$URI" uri >/dev/null 2>&1; }

start() {
  if ! grep -qxF "$MARK" "$CONF"; then
    cat >>"$CONF" <<CFG
$MARK
user = "oneadmin"
group = "oneadmin"
dynamic_ownership = 0
stdio_handler = "file"
remember_owner = 0
CFG
  fi
  # oneadmin (group libvirt) may use the read-write socket without polkit (no dbus here).
  if ! grep -qxF "$MARK" "$DCONF"; then
    cat >>"$DCONF" <<CFG
$MARK
unix_sock_group = "libvirt"
unix_sock_rw_perms = "0770"
unix_sock_auth = "none"
auth_unix_rw = "none"
CFG
  fi
  # QEMU runs as oneadmin: give /dev/kvm the usual Debian owner/mode (udev is absent here).
  if [[ -c /dev/kvm ]] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm || log "cannot open /dev/kvm to group kvm (tests fall back to TCG)"
  fi
  mkdir -p /run/libvirt /var/log/libvirt /var/lib/libvirt/qemu /var/cache/libvirt/qemu
  chown oneadmin:oneadmin /var/lib/libvirt/qemu /var/cache/libvirt/qemu 2>/dev/null || true
  if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && answers; then
    log "libvirtd already running"
  else
    rm -f "$PIDFILE"
    libvirtd -d -p "$PIDFILE"
    local i
    for ((i = 0; i < 120; i++)); do
      answers && break
      sleep 0.5
    done
    answers || die "libvirtd does not answer on $URI"
    log "libvirtd started"
  fi
}

stop() {
  local d
  for d in $(virsh -c "$URI" list --all --name 2>/dev/null | grep '^onebackup-test-' || true); do
    virsh -c "$URI" destroy "$d" >/dev/null 2>&1 || true
    virsh -c "$URI" undefine --checkpoints-metadata "$d" >/dev/null 2>&1 || true
  done
  if [[ -f $PIDFILE ]]; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    rm -f "$PIDFILE"
  fi
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
