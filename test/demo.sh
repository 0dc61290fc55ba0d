#!/usr/bin/env bash
# make demo: a real backup and restore through the restic driver, all on this machine.
# A generated qcow2 disk is staged as prebackup would, uploaded by drivers/restic/backup (run as
# oneadmin, exactly as oned runs it) into a restic repository served over SFTP by an sshd on
# loopback, listed with drivers/restic/ls, read back with restic and compared with qemu-img.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
state=/tmp/onebackup-demo
ds=900 vm=1000
stage=/var/lib/one/datastores/0/$vm/backup
base=/var/lib/one/datastores/$ds
restic=/var/lib/one/remotes/datastore/restic/restic
password='demo pass: quotes '\'' " and $dollars;'
work=$(mktemp -d)
trap '"$repo/test/harness/hosts.sh" down "$state" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

say() { printf '\n== %s\n' "$*"; }
as_oneadmin() { runuser -u oneadmin -- env HOME=/var/lib/one SSH_AUTH_SOCK="$state/agent.sock" ONEBACKUP_RUN_DIR="$state/run" "$@"; }

say "starting the simulated hosts (sshd on 127.0.0.1: fe, hv1, hv2, bk1)"
"$repo/test/harness/hosts.sh" up "$state"
install -o oneadmin -g oneadmin -m 0755 "$repo/bin/onebackup" /var/tmp/one/datastore/onebackup

say "staging a 256 MiB qcow2 disk with 32 MiB of random data for VM $vm (what prebackup leaves)"
rm -rf "$stage" "$base" && mkdir -p "$stage" "$base"
qemu-img create -q -f qcow2 "$stage/disk.0.0" 256M
head -c 32M /dev/urandom >"$work/data"
qemu-img dd -f raw -O qcow2 if="$work/data" of="$stage/disk.0.0" bs=1M count=32
printf '<VM><ID>%s</ID><TEMPLATE><DISK><DISK_ID>0</DISK_ID><SIZE>256</SIZE></DISK></TEMPLATE></VM>' "$vm" | base64 -w60 >"$stage/vm.xml"
chown -R oneadmin:oneadmin /var/lib/one/datastores

dsxml="<DATASTORE><ID>$ds</ID><DS_MAD>restic</DS_MAD><BASE_PATH>/var/lib/one//datastores/$ds</BASE_PATH><TEMPLATE><RESTIC_PASSWORD><![CDATA[$password]]></RESTIC_PASSWORD><RESTIC_SFTP_SERVER>bk1</RESTIC_SFTP_SERVER></TEMPLATE></DATASTORE>"
vmxml="<VM><ID>$vm</ID><BACKUPS><BACKUP_CONFIG><MODE>FULL</MODE></BACKUP_CONFIG></BACKUPS></VM>"

say "drivers/restic/backup hv1:/var/lib/one//datastores/0/$vm 0 one-$vm - $vm 0   (dry run first)"
echo "<DS_DRIVER_ACTION_DATA>$dsxml$vmxml</DS_DRIVER_ACTION_DATA>" >"$work/backup.xml"
chmod 644 "$work/backup.xml"; chmod 755 "$work"
as_oneadmin "$repo/drivers/restic/backup" --dry-run --xml "$work/backup.xml" "hv1:/var/lib/one//datastores/0/$vm" 0 "one-$vm" - "$vm" 0
reply=$(as_oneadmin "$repo/drivers/restic/backup" "hv1:/var/lib/one//datastores/0/$vm" 0 "one-$vm" - "$vm" 0 <"$work/backup.xml")
echo "backup replied: $reply"
id=${reply%% *}

say "drivers/restic/ls -i -1"
img="<IMAGE><ID>1</ID><SOURCE>$id</SOURCE><FORMAT>raw</FORMAT><VMS><ID>$vm</ID></VMS><TEMPLATE/></IMAGE>"
urls=$(echo "<DS_DRIVER_ACTION_DATA>$dsxml$vmxml$img</DS_DRIVER_ACTION_DATA>" | as_oneadmin "$repo/drivers/restic/ls" -i -1)
echo "$urls"
url=$(sed -E 's/.*"0":"([^"]+)".*/\1/' <<<"$urls")

say "drivers/restic/stat of $url"
printf '<DS_DRIVER_ACTION_DATA><IMAGE><PATH>%s</PATH></IMAGE>%s</DS_DRIVER_ACTION_DATA>' "$url" "$dsxml" | base64 -w0 |
  as_oneadmin "$repo/drivers/restic/stat" 1 | sed 's/^/disk size (MiB): /'

say "drivers/restic/monitor $ds"
echo "$dsxml" | base64 -w0 | as_oneadmin "$repo/drivers/restic/monitor" "$ds"

say "restoring disk.0.0 from snapshot $id and comparing it with the original"
as_oneadmin env RESTIC_PASSWORD="$password" "$restic" --repo="sftp:oneadmin@bk1:$base/$vm" dump --quiet "$id" "$stage/disk.0.0" >"$work/restored.qcow2"
qemu-img compare "$work/restored.qcow2" "$stage/disk.0.0"
say "demo passed: the restored disk is identical to the backed-up one"
