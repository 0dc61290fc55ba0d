#!/usr/bin/env bash
# make bench: figures for the restic driver on this machine (simulated hosts on loopback).
#   - wall time per invocation of stat, monitor and ls (start-up included), median of N runs;
#   - backup of a staged 1 GiB disk (random data) over SFTP through drivers/restic/backup, against
#     the same `restic backup` run by hand on the hypervisor.
# Prints figures only; nothing here asserts a time.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
state=/tmp/onebackup-e2e # shared with the end-to-end tests (see test/main_test.go)
ds=950 vm=1100 runs=${BENCH_RUNS:-10} size_mib=${BENCH_DISK_MIB:-1024}
stage=/var/lib/one/datastores/0/$vm/backup
base=/var/lib/one/datastores/$ds
password=bench-password
work=$(mktemp -d)
chmod 755 "$work"
# Hold the hosts' users lock (shared) like a test process; the last user out stops them.
exec 9>/tmp/onebackup-e2e.users.lock
flock -s 9
cleanup() {
  rm -rf "$work" "$stage" "$base"
  exec 9>&-
  if flock -n -x /tmp/onebackup-e2e.users.lock true; then "$repo/test/harness/hosts.sh" down "$state" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

as_oneadmin() { runuser -u oneadmin -- env HOME=/var/lib/one SSH_AUTH_SOCK="$state/agent.sock" ONEBACKUP_RUN_DIR="$state/run" "$@"; }
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
# time_runs N CMD… : median wall seconds of N runs (stdin from $work/in)
time_runs() {
  local n=$1; shift
  for ((i = 0; i < n; i++)); do
    local t0; t0=$(now)
    as_oneadmin "$@" <"$work/in" >/dev/null
    echo "$(now) - $t0" | bc
  done | median
}

if ! as_oneadmin ssh hv1 true 2>/dev/null; then
  flock -x /tmp/onebackup-e2e.setup.lock "$repo/test/harness/hosts.sh" up "$state" >/dev/null
fi
install -o oneadmin -g oneadmin -m 0755 "$repo/bin/onebackup" /var/tmp/one/datastore/onebackup
rm -rf "$stage" "$base" && mkdir -p "$stage" "$base"
echo "staging a ${size_mib} MiB qcow2 disk of random data…" >&2
head -c "${size_mib}M" /dev/urandom >"$work/raw"
qemu-img convert -f raw -O qcow2 "$work/raw" "$stage/disk.0.0"
rm -f "$work/raw"
printf '<VM><ID>%s</ID><TEMPLATE><DISK><DISK_ID>0</DISK_ID><SIZE>%s</SIZE></DISK></TEMPLATE></VM>' "$vm" "$size_mib" | base64 -w60 >"$stage/vm.xml"
chown -R oneadmin:oneadmin /var/lib/one/datastores

dsxml="<DATASTORE><ID>$ds</ID><DS_MAD>restic</DS_MAD><BASE_PATH>$base</BASE_PATH><TEMPLATE><RESTIC_PASSWORD>$password</RESTIC_PASSWORD><RESTIC_SFTP_SERVER>bk1</RESTIC_SFTP_SERVER></TEMPLATE></DATASTORE>"
vmxml="<VM><ID>$vm</ID><BACKUPS><BACKUP_CONFIG/></BACKUPS></VM>"
echo "<DS_DRIVER_ACTION_DATA>$dsxml$vmxml</DS_DRIVER_ACTION_DATA>" >"$work/in"

t0=$(now)
reply=$(as_oneadmin "$repo/drivers/restic/backup" "hv1:/var/lib/one//datastores/0/$vm" 0 "one-$vm" - "$vm" 0 <"$work/in")
t_driver=$(echo "$(now) - $t0" | bc)
id=${reply%% *}

# The same upload by hand, into a fresh repository (so that nothing is deduplicated either way).
as_oneadmin env RESTIC_PASSWORD=$password /var/lib/one/remotes/datastore/restic/restic -q --repo="sftp:oneadmin@bk1:$base/byhand" init
t0=$(now)
as_oneadmin ssh -A hv1 env RESTIC_PASSWORD=$password /var/tmp/one/datastore/restic/restic --repo="sftp:oneadmin@bk1:$base/byhand" \
  backup "$stage/disk.0.0" "$stage/vm.xml" --force --json --tag="one-$vm" >/dev/null
t_hand=$(echo "$(now) - $t0" | bc)

img="<IMAGE><ID>1</ID><SOURCE>$id</SOURCE><FORMAT>raw</FORMAT><VMS><ID>$vm</ID></VMS><TEMPLATE/></IMAGE>"
url="restic://$ds//0:$id$stage/disk.0.0"
printf '<DS_DRIVER_ACTION_DATA><IMAGE><PATH>%s</PATH></IMAGE>%s</DS_DRIVER_ACTION_DATA>' "$url" "$dsxml" | base64 -w0 >"$work/in"
t_stat=$(time_runs "$runs" "$repo/drivers/restic/stat" 1)
echo "$dsxml" | base64 -w0 >"$work/in"
t_monitor=$(time_runs "$runs" "$repo/drivers/restic/monitor" "$ds")
echo "<DS_DRIVER_ACTION_DATA>$dsxml$vmxml$img</DS_DRIVER_ACTION_DATA>" >"$work/in"
t_ls=$(time_runs "$runs" "$repo/drivers/restic/ls" -i -1)

# --- rsync: a 1 GiB sparse disk holding 128 MiB of data ------------------------------------
rds=951
rbase=/var/lib/one/datastores/$rds
rm -rf "$stage" "$rbase" && mkdir -p "$stage" "$rbase"
truncate -s 1G "$stage/disk.0.0"
head -c 128M /dev/urandom | dd of="$stage/disk.0.0" bs=1M seek=256 conv=notrunc status=none
printf '<VM><ID>%s</ID><TEMPLATE><DISK><DISK_ID>0</DISK_ID><SIZE>1024</SIZE></DISK></TEMPLATE></VM>' "$vm" | base64 -w60 >"$stage/vm.xml"
chown -R oneadmin:oneadmin /var/lib/one/datastores
rdsxml="<DATASTORE><ID>$rds</ID><DS_MAD>rsync</DS_MAD><BASE_PATH>$rbase</BASE_PATH><TEMPLATE><RSYNC_HOST>bk1</RSYNC_HOST><RSYNC_USER>oneadmin</RSYNC_USER></TEMPLATE></DATASTORE>"
echo "<DS_DRIVER_ACTION_DATA>$rdsxml$vmxml</DS_DRIVER_ACTION_DATA>" >"$work/in"
t0=$(now)
rreply=$(as_oneadmin "$repo/drivers/rsync/backup" "hv1:/var/lib/one//datastores/0/$vm" 0 "one-$vm" - "$vm" 0 <"$work/in")
t_rdriver=$(echo "$(now) - $t0" | bc)
rid=${rreply%% *}
as_oneadmin ssh bk1 mkdir -p "$rbase/byhand"
t0=$(now)
as_oneadmin ssh -A hv1 rsync -aS "$stage/" "oneadmin@bk1:$rbase/byhand/"
t_rhand=$(echo "$(now) - $t0" | bc)
rurl="rsync://$rds//0:$rid$rbase/$vm/$rid/disk.0.0"
printf '<DS_DRIVER_ACTION_DATA><IMAGE><PATH>%s</PATH></IMAGE>%s</DS_DRIVER_ACTION_DATA>' "$rurl" "$rdsxml" | base64 -w0 >"$work/in"
t_rstat=$(time_runs "$runs" "$repo/drivers/rsync/stat" 1)
echo "$rdsxml" | base64 -w0 >"$work/in"
t_rmonitor=$(time_runs "$runs" "$repo/drivers/rsync/monitor" "$rds")
rm -rf "$rbase"

printf '\nrestic driver, %s runs each, median wall time (s):\n' "$runs"
printf '  stat     %s\n  monitor  %s\n  ls       %s\n' "$t_stat" "$t_monitor" "$t_ls"
printf 'backup of a %s MiB staged disk over SFTP (s):\n' "$size_mib"
printf '  drivers/restic/backup        %.2f   (includes repository creation)\n' "$t_driver"
printf '  restic backup run by hand    %.2f\n' "$t_hand"
printf '\nrsync driver, %s runs each, median wall time (s):\n' "$runs"
printf '  stat     %s\n  monitor  %s\n' "$t_rstat" "$t_rmonitor"
printf 'backup of a 1 GiB sparse staged disk with 128 MiB of data (s):\n'
printf '  drivers/rsync/backup         %.2f\n' "$t_rdriver"
printf '  rsync -aS run by hand        %.2f\n' "$t_rhand"
