#!/usr/bin/env bash
# Start, stop or check a single-node Ceph Pacific cluster for the RBD and S3 tests, by hand: no
# cephadm and no systemd here (setup-ceph.sh installs the packages). One mon, one mgr, one
# bluestore OSD on a sparse file, one radosgw; all on 127.0.0.1, all run as root, every file
# (config, keyrings, data, pid files, admin sockets, logs) under STATE_DIR.
#   ceph.sh start STATE_DIR    bring the cluster up (or keep the one that answers); print the env
#   ceph.sh stop STATE_DIR     kill its daemons (pid files), remove STATE_DIR; safe when nothing runs
#   ceph.sh status STATE_DIR   exit 0 when the cluster and radosgw answer, 1 otherwise
# `start` writes STATE_DIR/env (KEY=VALUE lines, no quotes): CEPH_CONF, CEPH_USER, CEPH_KEYRING,
# CEPH_POOL, RGW_ENDPOINT, RGW_ACCESS_KEY, RGW_SECRET_KEY. The RBD client is client.oneadmin
# (rbd profile on pool `one`), its keyring readable by the unix user oneadmin.
# Keep STATE_DIR short: the daemons' unix sockets live in it (paths ≤ 107 characters).
set -euo pipefail

MON_PORT_V2=3300
MON_PORT_V1=6789
RGW_PORT=7480
RGW_ENDPOINT=http://127.0.0.1:$RGW_PORT
POOL=one
CLIENT=oneadmin
S3_UID=onebackup
# Seconds `start` may take in all; a loaded CI machine is slow, a normal bring-up ≈ 15–25 s.
TIMEOUT=${CEPH_START_TIMEOUT:-120}

log() { printf 'ceph.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"
(($# == 2)) || die "usage: $0 start|stop|status STATE_DIR"
ACTION=$1
STATE=${2%/}
[[ $STATE == /* ]] || die "STATE_DIR must be an absolute path: $STATE"
[[ $STATE != / && $STATE != /tmp && $STATE != /var && $STATE != /root ]] || die "refusing STATE_DIR $STATE"
# The longest socket is $STATE/run/ceph-client.rgw.gw.asok; the kernel limit is 107 bytes.
((${#STATE} + 29 <= 107)) || die "STATE_DIR too long for unix socket paths: $STATE"

CONF=$STATE/ceph.conf
RUN=$STATE/run
LOGS=$STATE/log
ADMIN_KEYRING=$STATE/ceph.client.admin.keyring
CLIENT_KEYRING=$STATE/ceph.client.$CLIENT.keyring
ENV_FILE=$STATE/env
# Written last by a successful `start`; `stop` removes only a directory that holds it or ceph.conf,
# so a mistyped STATE_DIR never deletes someone else's files.
MARK=$STATE/.onebackup-ceph

# Every ceph/rbd call names the config and gives up instead of hanging on a dead mon.
ceph_() { timeout 20 ceph -c "$CONF" --connect-timeout 10 "$@"; }

cluster_answers() {
  [[ -f $CONF && -f $ADMIN_KEYRING ]] || return 1
  timeout 8 ceph -c "$CONF" --connect-timeout 5 health >/dev/null 2>&1
}
# Anonymous GET / on radosgw answers 200 with an empty bucket list.
rgw_answers() { curl -fsS -o /dev/null -m 3 "$RGW_ENDPOINT/" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid of daemon $1 when it runs with our ceph.conf (a stale pid file of a reused pid is ignored).
daemon_pid() {
  local f=$RUN/$1.pid pid
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] && started_here "$pid" && printf '%s\n' "$pid"
}
# started_here PID: PID was started with our ceph.conf.
started_here() {
  local cmd
  cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") && [[ $cmd == *" -c $CONF "* ]]
}

# Processes started with our ceph.conf whose pid file is gone (e.g. killed half-way through a
# start): found by the exact config path on their command line, killed by pid like the others.
orphan_pids() {
  local d pid
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    case $(readlink "$d/exe" 2>/dev/null) in
      */ceph-mon | */ceph-mgr | */ceph-osd | */radosgw) ;;
      *) continue ;;
    esac
    started_here "$pid" && printf '%s\n' "$pid"
  done
  return 0
}

# term_kill PID…: TERM, then KILL what still runs after 5 s; returns once all are gone.
term_kill() {
  local pid i
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    any_alive "$@" || return 0
    sleep 0.1
  done
  for pid in "$@"; do
    kill -KILL "$pid" 2>/dev/null && log "killed $pid: still running 5 s after TERM"
  done
  # Wait for the kills to land so the ports are free for a fresh start.
  for ((i = 0; i < 50; i++)); do
    any_alive "$@" || return 0
    sleep 0.1
  done
}
any_alive() {
  local pid
  for pid in "$@"; do
    kill -0 "$pid" 2>/dev/null && return 0
  done
  return 1
}

stop() {
  local first=() last=() d pid
  if [[ -d $STATE ]]; then
    # radosgw and the OSD first, while the mon is there to hear that the OSD goes down: an OSD
    # without its mon waits for it until it gives up, longer than TERM's grace.
    for d in client.rgw.gw osd.0; do
      pid=$(daemon_pid "$d") && first+=("$pid")
    done
    for d in mgr.x mon.a; do
      pid=$(daemon_pid "$d") && last+=("$pid")
    done
  fi
  while read -r pid; do
    [[ -n $pid && " ${first[*]} ${last[*]} " != *" $pid "* ]] && last+=("$pid")
  done < <(orphan_pids)
  if ((${#first[@]} + ${#last[@]})); then
    log "stopping daemons (pids ${first[*]} ${last[*]})"
    term_kill "${first[@]}"
    term_kill "${last[@]}"
  fi
  if [[ -d $STATE ]]; then
    if [[ -e $MARK || -e $CONF || -z $(ls -A "$STATE") ]]; then
      rm -rf -- "$STATE"
      log "removed $STATE"
    else
      die "$STATE does not look like a ceph.sh cluster directory; not removing it"
    fi
  fi
}

# Exit status 0 or 1 only (curl's own codes would leak out otherwise). Dead pids answer at once;
# a hung mon costs the ceph timeout.
status() {
  local d
  [[ -e $MARK ]] || return 1
  for d in mon.a mgr.x osd.0 client.rgw.gw; do
    daemon_pid "$d" >/dev/null || return 1
  done
  cluster_answers && rgw_answers && return 0
  return 1
}

# wait_for WHAT DAEMON COMMAND…: run COMMAND until it succeeds or the deadline passes; on failure
# name WHAT and show the tail of DAEMON's log. A daemon that died stops the wait at once.
DEADLINE=0
wait_for() {
  local what=$1 daemon=$2
  shift 2
  while ! "$@" >/dev/null 2>&1; do
    if [[ -f $RUN/$daemon.pid ]] && ! daemon_pid "$daemon" >/dev/null; then
      fail "$what: $daemon exited" "$daemon"
    fi
    ((SECONDS < DEADLINE)) || fail "$what: not done after ${TIMEOUT}s" "$daemon"
    sleep 0.5
  done
}
fail() {
  log "$1"
  local f
  for f in "$LOGS/$2.out" "$LOGS/$2.log"; do
    [[ -s $f ]] || continue
    log "last lines of $f:"
    tail -n 30 "$f" >&2
  done
  log "daemons left running for a look; \`$0 stop $STATE\` ends them and removes $STATE"
  exit 1
}

# quiet COMMAND…: show COMMAND's chatter ("pool 'one' created"…) only when it fails.
quiet() {
  local out
  out=$("$@" 2>&1) && return 0
  log "failed: $*"
  printf '%s\n' "$out" >&2
  return 1
}

# daemon NAME COMMAND…: start a Ceph daemon (it forks into the background and writes
# $RUN/NAME.pid). Its output from before it forks goes to $LOGS/NAME.out, and it must not inherit
# the lock on fd 9, or every later ceph.sh call would wait for the daemon to end.
daemon() {
  local name=$1
  shift
  "$@" --setuser root --setgroup root 9>&- >>"$LOGS/$name.out" 2>&1 || fail "cannot start $name" "$name"
}

write_conf() {
  local fsid=$1
  cat >"$CONF" <<CONF
# Single-node test cluster made by test/harness/ceph.sh; everything lives under $STATE.
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$MON_PORT_V2,v1:127.0.0.1:$MON_PORT_V1]
public network = 127.0.0.1/32
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $RUN
# Crash reports of our daemons stay with the cluster, not in the host's /var/lib/ceph/crash.
crash dir = $STATE/crash
# One OSD: every pool has a single copy and PGs map to the OSD itself, not to other hosts.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
# Fixed small pools: the autoscaler would split/merge PGs (peering pauses) under the tests.
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool delete = true
# The mgr is there for rbd_support (rbd trash, deferred deletes, the rbd profile's mgr caps) and
# to keep "no active mgr" out of the health. Of its optional modules (read by the mon when it
# creates the mgr map, hence [global]) restful and nfs serve nothing here. The always-on ones
# (balancer, crash, devicehealth, telemetry, volumes…) stay: "mgr disabled modules" on them
# turns the health to HEALTH_ERR MGR_MODULE_ERROR.
mgr initial modules = iostat
# Health warnings that are expected on a one-OSD test cluster: none means a problem.
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
mon warn on too few osds = false
# Otherwise the mon warns (and at 5 % refuses to run) when the machine's disk is fairly full.
mon data avail warn = 1
mon data avail crit = 0

[mon]
mon data = $STATE/mon
keyring = $STATE/mon/keyring
mon cluster log file = $LOGS/cluster.log
log file = $LOGS/\$name.log
pid file = $RUN/\$name.pid

[mgr]
mgr data = $STATE/mgr
keyring = $STATE/mgr/keyring
log file = $LOGS/\$name.log
pid file = $RUN/\$name.pid

[osd]
osd data = $STATE/osd
keyring = $STATE/osd/keyring
osd objectstore = bluestore
# Bluestore on a sparse file: memstore would keep 2.2× the stored data in RAM. Never set
# "bluestore block path" to \$osd_data/block: bluestore then mistakes the file for its symlink.
bluestore block create = true
bluestore block size = 10G
# The smallest allowed target; the cache grows only with the data the tests write.
osd memory target = 939524096
# Else deleted snapshots linger for minutes (trim sleeps between objects).
osd snap trim sleep = 0
osd snap trim sleep hdd = 0
osd snap trim sleep ssd = 0
osd snap trim sleep hybrid = 0
log file = $LOGS/\$name.log
pid file = $RUN/\$name.pid

[client]
keyring = $STATE/ceph.\$name.keyring

[client.rgw.gw]
rgw data = $STATE/rgw
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
log file = $LOGS/\$name.log
pid file = $RUN/\$name.pid
admin socket = $RUN/ceph-\$name.asok
CONF
}

rbd_usable() {
  local img=onebackup-probe-$$
  rbd -c "$CONF" --id "$CLIENT" --keyring "$CLIENT_KEYRING" create --size 4M "$POOL/$img" &&
    rbd -c "$CONF" --id "$CLIENT" --keyring "$CLIENT_KEYRING" rm --no-progress "$POOL/$img"
}
# Output is captured before matching: `grep -q` may close the pipe early, and with pipefail
# the writer's SIGPIPE would turn a match into a failure.
osd_up_in() {
  local out
  out=$(ceph_ osd dump) && grep -Eq '^osd\.0 up +in ' <<<"$out"
}
mgr_available() {
  local out
  out=$(ceph_ mgr stat) && grep -q '"available": true' <<<"$out"
}

start_fresh() {
  local p
  for p in "$MON_PORT_V2" "$MON_PORT_V1" "$RGW_PORT"; do
    port_open "$p" && die "127.0.0.1:$p is in use (another Ceph cluster or radosgw?)"
  done
  DEADLINE=$((SECONDS + TIMEOUT))
  install -d -m 0755 "$STATE" "$RUN" "$LOGS" "$STATE"/{mon,mgr,osd,rgw,crash}
  local fsid
  fsid=$(</proc/sys/kernel/random/uuid)
  write_conf "$fsid"
  chmod 0644 "$CONF"

  # mon: its own key plus client.admin's, so the first `ceph` calls are authorized.
  local monkr=$STATE/mon.keyring.init
  ceph-authtool --create-keyring "$monkr" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$ADMIN_KEYRING" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  chmod 0600 "$ADMIN_KEYRING"
  ceph-authtool "$monkr" --import-keyring "$ADMIN_KEYRING" >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_PORT_V2,v1:127.0.0.1:$MON_PORT_V1]" \
    "$STATE/monmap" >/dev/null
  quiet ceph-mon -c "$CONF" -i a --mkfs --monmap "$STATE/monmap" --keyring "$monkr" \
    --setuser root --setgroup root
  rm -f -- "$monkr" "$STATE/monmap"
  daemon mon.a ceph-mon -c "$CONF" -i a
  wait_for "mon answering" mon.a ceph_ mon stat

  # mgr and OSD keys, then both daemons; they start in parallel.
  ceph_ auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
    -o "$STATE/mgr/keyring" >/dev/null
  daemon mgr.x ceph-mgr -c "$CONF" -i x

  local osd_uuid osd_key osd_id
  osd_uuid=$(</proc/sys/kernel/random/uuid)
  osd_key=$(ceph-authtool --gen-print-key)
  osd_id=$(printf '{"cephx_secret": "%s"}' "$osd_key" | ceph_ osd new "$osd_uuid" -i -)
  [[ $osd_id == 0 ]] || die "expected osd id 0, the mon gave '$osd_id'"
  ceph-authtool --create-keyring "$STATE/osd/keyring" -n osd.0 --add-key "$osd_key" >/dev/null
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" --setuser root --setgroup root \
    >"$LOGS/osd.0.mkfs.out" 2>&1 || fail "OSD mkfs failed" osd.0.mkfs
  daemon osd.0 ceph-osd -c "$CONF" -i 0

  # radosgw creates its pools (size 1 from the defaults) once the OSD serves I/O; start it now
  # so that overlaps with the RBD pool setup below.
  ceph_ auth get-or-create client.rgw.gw mon 'allow rw' osd 'allow rwx' mgr 'allow rw' \
    -o "$STATE/ceph.client.rgw.gw.keyring" >/dev/null
  chmod 0600 "$STATE/ceph.client.rgw.gw.keyring" "$STATE/mgr/keyring"
  daemon client.rgw.gw radosgw -c "$CONF" -n client.rgw.gw

  wait_for "OSD up and in" osd.0 osd_up_in
  quiet ceph_ osd pool create "$POOL" 8 8
  quiet ceph_ osd pool application enable "$POOL" rbd
  wait_for "rbd pool init $POOL" osd.0 timeout 30 rbd -c "$CONF" pool init "$POOL"

  ceph_ auth get-or-create "client.$CLIENT" mon 'profile rbd' osd "profile rbd pool=$POOL" \
    mgr "profile rbd pool=$POOL" -o "$CLIENT_KEYRING" >/dev/null
  if getent passwd oneadmin >/dev/null; then
    chown root:"$(id -gn oneadmin)" "$CLIENT_KEYRING"
    chmod 0640 "$CLIENT_KEYRING"
  else
    # Test cluster: let the user that appears later read it.
    log "no user oneadmin: $CLIENT_KEYRING left root-owned, mode 0644"
    chmod 0644 "$CLIENT_KEYRING"
  fi
  wait_for "mgr available" mgr.x mgr_available
  wait_for "RBD I/O as client.$CLIENT on pool $POOL" osd.0 rbd_usable

  wait_for "radosgw answering on $RGW_ENDPOINT" client.rgw.gw rgw_answers
  local ak sk
  # Hex keys: only characters that need no quoting anywhere (env file, URLs, shell).
  ak=$(od -An -tx1 -N10 /dev/urandom | tr -d ' \n' | tr a-f A-F)
  sk=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')
  timeout 60 radosgw-admin -c "$CONF" user create --uid="$S3_UID" --display-name="onebackup tests" \
    --access-key="$ak" --secret="$sk" >/dev/null || fail "radosgw-admin user create failed" client.rgw.gw

  umask 022
  cat >"$ENV_FILE.tmp" <<ENV
CEPH_CONF=$CONF
CEPH_USER=$CLIENT
CEPH_KEYRING=$CLIENT_KEYRING
CEPH_POOL=$POOL
RGW_ENDPOINT=$RGW_ENDPOINT
RGW_ACCESS_KEY=$ak
RGW_SECRET_KEY=$sk
ENV
  chmod 0644 "$ENV_FILE.tmp"
  mv -f -- "$ENV_FILE.tmp" "$ENV_FILE"
  : >"$MARK"
  local health
  health=$(ceph_ health 2>&1 || true)
  log "cluster up in ${SECONDS}s ($health)"
}

start() {
  if status && [[ -s $ENV_FILE ]]; then
    log "cluster in $STATE already running"
  else
    if [[ -e $STATE ]]; then
      log "$STATE holds no working cluster: starting afresh"
      stop
    fi
    start_fresh
  fi
  cat "$ENV_FILE"
}

# One start/stop at a time per STATE_DIR (parallel test processes may all ask for the cluster).
exec 9>"$STATE.lock"
flock 9

case $ACTION in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status STATE_DIR" ;;
esac
