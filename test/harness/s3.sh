#!/usr/bin/env bash
# A non-Ceph S3 server for the restic S3 backend tests: versitygw (built by setup-versitygw.sh)
# with its posix backend, over HTTPS on 127.0.0.1 with a private test CA.
#
#   s3.sh start STATE_DIR    start (or keep the one already answering from this STATE_DIR)
#   s3.sh stop STATE_DIR     stop it and remove STATE_DIR; safe when nothing runs
#   s3.sh status STATE_DIR   exit 0 when it answers, 1 otherwise
#
# STATE_DIR belongs to this script (marked by .onebackup-s3). After `start`, STATE_DIR/env holds
# KEY=VALUE lines (no quotes): S3_ENDPOINT S3_ACCESS_KEY S3_SECRET_KEY S3_BUCKET S3_CACERT
# S3_WRONG_CACERT (a CA that did not sign the server certificate, to check it is refused).
# Port: ONEBACKUP_S3_PORT (default 7443); one server per port, so one STATE_DIR at a time.
set -euo pipefail

PORT=${ONEBACKUP_S3_PORT:-7443}
BUCKET=onebackup
# versitygw's default; SigV4 signatures include it, so curl must use the same.
REGION=us-east-1
USER_NAME=oneadmin
MARK=.onebackup-s3
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/../.." && pwd)
CACHE=${ONEBACKUP_CACHE:-$REPO_ROOT/.cache}
VGW=$CACHE/bin/versitygw

log() { printf 's3.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

usage() { die "usage: $0 start|stop|status STATE_DIR"; }

[[ $# -eq 2 ]] || usage
ACTION=$1
[[ -n $2 ]] || usage
# Absolute, so the paths written to env and given to versitygw hold from any directory.
STATE=$(realpath -m -- "$2")
[[ $STATE != / ]] || die "refusing STATE_DIR /"

PIDFILE=$STATE/versitygw.pid
LOGFILE=$STATE/versitygw.log
SECRETS=$STATE/credentials
CA=$STATE/ca.crt
WRONG_CA=$STATE/wrong-ca.crt
ENDPOINT=https://127.0.0.1:$PORT

# True while a pid runs. PID 1 here reaps orphans late, so a zombie counts as gone.
alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

# The pid from the pid file when it is still versitygw (a recycled pid is someone else's).
server_pid() {
  local pid
  [[ -f $PIDFILE ]] || return 1
  pid=$(<"$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == versitygw ]] &&
    alive "$pid" || return 1
  echo "$pid"
}

# curl with a SigV4-signed request as the root user. The key pair goes through a config on
# stdin, not argv, where any user could read it with ps. S3 wants x-amz-content-sha256, which
# curl 7.88 does not add by itself; our requests have no body worth signing.
s3_curl() {
  local access secret
  { read -r access && read -r secret; } <"$SECRETS"
  printf 'user = "%s:%s"\n' "$access" "$secret" |
    curl -K - -sS --max-time 10 --cacert "$CA" --aws-sigv4 "aws:amz:$REGION:s3" \
      -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"
}

# Any HTTP answer over TLS verified with our CA (a wrong key still gets an S3 error back).
https_up() {
  local code
  code=$(curl -sS --max-time 2 --cacert "$CA" -o /dev/null -w '%{http_code}' "$ENDPOINT/" 2>/dev/null) || true
  [[ $code =~ ^[1-5][0-9][0-9]$ ]]
}

# Answers = TLS verified with this STATE_DIR's CA and a signed HeadBucket of the test bucket
# accepted: our server, our keys, and the bucket there, not merely something on the port.
answers() {
  [[ -f $CA && -f $SECRETS ]] || return 1
  [[ $(s3_curl -I -o /dev/null -w '%{http_code}' "$ENDPOINT/$BUCKET" 2>/dev/null) == 200 ]]
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

stop_server() {
  local pid i
  if pid=$(server_pid); then
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      log "versitygw $pid ignores TERM, killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f -- "$PIDFILE"
}

# Remove STATE_DIR only when it is ours (or empty): a wrong argument must not wipe a directory.
remove_state() {
  [[ -e $STATE ]] || return 0
  if [[ -e $STATE/$MARK ]]; then
    rm -rf -- "$STATE"
  elif [[ -d $STATE && -z $(ls -A -- "$STATE") ]]; then
    rmdir -- "$STATE"
  else
    die "$STATE is not an s3.sh state directory (no $MARK), leaving it"
  fi
}

# new_ca NAME: a self-signed CA, used only to sign (Go wants CA:TRUE and keyCertSign).
new_ca() {
  local name=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 3650 \
    -subj "/CN=onebackup test $name" \
    -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$STATE/$name.key" -out "$STATE/$name.crt" 2>/dev/null
  chmod 0600 "$STATE/$name.key"
  chmod 0644 "$STATE/$name.crt"
}

make_state() {
  install -d -m 0755 "$STATE"
  : >"$STATE/$MARK"
  new_ca ca
  new_ca wrong-ca
  # Server certificate for both names a test may use; serverAuth so Go's verifier accepts it.
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -subj /CN=127.0.0.1 -keyout "$STATE/server.key" -out "$STATE/server.csr" 2>/dev/null
  openssl x509 -req -sha256 -days 825 -in "$STATE/server.csr" \
    -CA "$CA" -CAkey "$STATE/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -extfile <(printf '%s\n' 'basicConstraints=critical,CA:FALSE' \
      'keyUsage=critical,digitalSignature,keyEncipherment' \
      'extendedKeyUsage=serverAuth' 'subjectAltName=IP:127.0.0.1,DNS:localhost') \
    -out "$STATE/server.crt" 2>/dev/null
  rm -f -- "$STATE/server.csr"
  chmod 0600 "$STATE/server.key"
  chmod 0644 "$STATE/server.crt"
  # Test keys, fresh per STATE_DIR: line 1 access key, line 2 secret.
  (umask 077 && printf 'onebackup%s\n%s\n' "$(openssl rand -hex 6)" "$(openssl rand -hex 20)" >"$SECRETS")
  # Root only: the tests reach objects through S3, never through the files.
  install -d -m 0700 "$STATE/data"
}

write_env() {
  local access secret
  { read -r access && read -r secret; } <"$SECRETS"
  {
    echo "S3_ENDPOINT=$ENDPOINT"
    echo "S3_ACCESS_KEY=$access"
    echo "S3_SECRET_KEY=$secret"
    echo "S3_BUCKET=$BUCKET"
    echo "S3_CACERT=$CA"
    echo "S3_WRONG_CACERT=$WRONG_CA"
  } >"$STATE/env.tmp"
  chmod 0644 "$STATE/env.tmp"
  mv -f -- "$STATE/env.tmp" "$STATE/env"
}

start() {
  if server_pid >/dev/null && answers; then
    write_env
    log "versitygw already answers on $ENDPOINT"
    return 0
  fi
  # A dead or unanswering server from this STATE_DIR: start over from nothing.
  stop_server
  remove_state
  if port_taken; then
    die "127.0.0.1:$PORT is taken by another process (another STATE_DIR? set ONEBACKUP_S3_PORT)"
  fi
  if [[ ! -x $VGW ]]; then
    "$SCRIPT_DIR/setup-versitygw.sh"
  fi
  make_state

  # setsid: its own session, so the caller's process group ending does not take it along; the
  # inner shell writes its pid and execs, so the pid file names versitygw itself. The key pair
  # goes through versitygw's environment variables, not argv.
  local access secret
  { read -r access && read -r secret; } <"$SECRETS"
  # shellcheck disable=SC2016 # $$, $1 and $@ are the inner shell's
  ROOT_ACCESS_KEY_ID=$access ROOT_SECRET_ACCESS_KEY=$secret \
    setsid -f bash -c 'echo "$$" >"$1" && shift && exec "$@"' _ "$PIDFILE" \
    "$VGW" --port "127.0.0.1:$PORT" --cert "$STATE/server.crt" --key "$STATE/server.key" \
    --region "$REGION" posix "$STATE/data" </dev/null >>"$LOGFILE" 2>&1

  local pid='' deadline=$((SECONDS + 30))
  until https_up; do
    if [[ -z $pid ]]; then
      pid=$(cat "$PIDFILE" 2>/dev/null || true)
    elif ! alive "$pid"; then
      die "versitygw exited; log $LOGFILE: $(tail -n 5 "$LOGFILE" 2>/dev/null)"
    fi
    ((SECONDS < deadline)) ||
      die "versitygw does not answer on $ENDPOINT after 30 s; log $LOGFILE: $(tail -n 5 "$LOGFILE" 2>/dev/null)"
    sleep 0.1
  done

  # The bucket through S3 (CreateBucket), not mkdir: versitygw then records its owner and ACL
  # the way it does for any bucket. restic would create it too, but only at `init`, and tests
  # of other commands need it to exist.
  local code
  code=$(s3_curl -o "$STATE/create-bucket.out" -w '%{http_code}' -X PUT "$ENDPOINT/$BUCKET") || true
  [[ $code == 200 ]] ||
    die "creating bucket $BUCKET failed (HTTP $code): $(cat "$STATE/create-bucket.out" 2>/dev/null)"
  rm -f -- "$STATE/create-bucket.out"
  answers || die "versitygw refuses a signed HeadBucket $BUCKET; log $LOGFILE: $(tail -n 5 "$LOGFILE" 2>/dev/null)"

  write_env
  # restic runs as oneadmin: it must reach env and the CA files through every parent directory.
  if [[ $(id -u) -eq 0 ]] && getent passwd "$USER_NAME" >/dev/null; then
    runuser -u "$USER_NAME" -- test -r "$STATE/env" -a -r "$CA" -a -r "$WRONG_CA" ||
      die "$USER_NAME cannot read $STATE (is a parent directory closed?)"
  fi
  log "versitygw answers on $ENDPOINT (pid $(<"$PIDFILE")); source $STATE/env"
}

stop() {
  stop_server
  remove_state
}

status() {
  if server_pid >/dev/null && answers; then
    log "versitygw answers on $ENDPOINT"
    return 0
  fi
  log "versitygw from $STATE does not answer"
  return 1
}

case $ACTION in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
