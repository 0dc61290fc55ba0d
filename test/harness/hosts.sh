#!/usr/bin/env bash
# Simulated OpenNebula hosts for tests: one sshd per "host" on 127.0.0.1,
# all logging in as oneadmin, plus one ssh-agent holding the only client key.
#
#   hosts.sh up STATE_DIR     start (stops leftovers from an earlier run first)
#   hosts.sh down STATE_DIR   stop daemons, restore oneadmin's ~/.ssh/config
#
# Aliases fe, hv1, hv2, bk1 listen on base+1..4 (ONEBACKUP_SSH_BASE_PORT,
# default 22200). The client key lives only in STATE_DIR/keys and the agent, so
# a hop from one host to another authenticates only through a forwarded agent.
# Source STATE_DIR/env for SSH_AUTH_SOCK, SSH_AGENT_PID and the ports.
set -euo pipefail

HOSTS=(fe hv1 hv2 bk1)
BASE_PORT=${ONEBACKUP_SSH_BASE_PORT:-22200}
SSHD=/usr/sbin/sshd
USER_NAME=oneadmin
# Marks a ~/.ssh/config as ours (so a lost backup never saves our own file).
MARKER='# written by onebackup test/harness/hosts.sh'

log() { printf 'hosts.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

usage() { die "usage: $0 up|down STATE_DIR"; }

# True while a pid runs. PID 1 here reaps orphans late, so a zombie counts
# as gone.
alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

# Kill a process from a pid file if it is still the expected program.
stop_pidfile() {
  local pidfile=$1 comm=$2 pid i
  [[ -f $pidfile ]] || return 0
  pid=$(<"$pidfile")
  if [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]; then
    if [[ $comm == sshd ]]; then
      # Per-connection sshd children outlive the listener: end them too.
      local child
      for child in $(pgrep -P "$pid" || true); do
        kill "$child" 2>/dev/null || true
      done
    fi
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f -- "$pidfile"
}

stop_daemons() {
  local name
  for name in "${HOSTS[@]}"; do
    stop_pidfile "$STATE/$name/sshd.pid" sshd
  done
  stop_pidfile "$STATE/agent.pid" ssh-agent
  rm -f -- "$STATE/agent.sock"
}

wait_port() {
  local port=$1 i
  for ((i = 0; i < 100; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

as_user() { runuser -u "$USER_NAME" -- "$@"; }

cmd_up() {
  [[ -x $SSHD ]] || die "$SSHD missing: run test/harness/setup-deps.sh"
  getent passwd "$USER_NAME" >/dev/null || die "no user $USER_NAME: run setup-deps.sh"
  local home ssh_dir cfg name i port pub
  home=$(getent passwd "$USER_NAME" | cut -d: -f6)
  ssh_dir=$home/.ssh
  cfg=$ssh_dir/config

  stop_daemons
  # The ports are this state's alone: an sshd of another state directory (make demo while the
  # end-to-end tests run, or the reverse) would answer with its own host key, and every
  # connection would fail on a changed host key instead of saying so.
  for i in "${!HOSTS[@]}"; do
    port=$((BASE_PORT + i + 1))
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "127.0.0.1:$port is in use, probably by the simulated hosts of another run ($(pgrep -af "sshd.*onebackup" | grep -v "$STATE" | head -n 1 | cut -c1-120)); wait for it or stop it with $0 down <its state dir>"
    fi
  done
  mkdir -p /run/sshd
  chmod 0755 /run/sshd

  # Client key: only in STATE_DIR and (below) in the agent.
  mkdir -p "$STATE/keys"
  if [[ ! -f $STATE/keys/id_ed25519 ]]; then
    ssh-keygen -q -t ed25519 -N '' -C "onebackup-test" -f "$STATE/keys/id_ed25519"
  fi
  cp "$STATE/keys/id_ed25519.pub" "$STATE/authorized_keys"

  # Per-host sshd config and host key; known_hosts under the alias names.
  : >"$STATE/known_hosts"
  for i in "${!HOSTS[@]}"; do
    name=${HOSTS[$i]}
    port=$((BASE_PORT + i + 1))
    mkdir -p "$STATE/$name"
    if [[ ! -f $STATE/$name/ssh_host_ed25519_key ]]; then
      ssh-keygen -q -t ed25519 -N '' -C "$name" -f "$STATE/$name/ssh_host_ed25519_key"
    fi
    read -r -a pub <"$STATE/$name/ssh_host_ed25519_key.pub"
    printf '%s %s %s\n' "$name" "${pub[0]}" "${pub[1]}" >>"$STATE/known_hosts"
    cat >"$STATE/$name/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $STATE/$name/ssh_host_ed25519_key
PidFile $STATE/$name/sshd.pid
AuthorizedKeysFile $STATE/authorized_keys
AllowUsers $USER_NAME
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowAgentForwarding yes
X11Forwarding no
PrintMotd no
MaxStartups 100
MaxSessions 100
Subsystem sftp internal-sftp
LogLevel ERROR
CFG
  done

  # STATE_DIR must be readable by oneadmin (authorized_keys, agent socket).
  chown -R "$USER_NAME:" "$STATE"
  chmod 0700 "$STATE/keys"
  chmod 0600 "$STATE/keys/id_ed25519"
  as_user test -w "$STATE" -a -r "$STATE/keys/id_ed25519" ||
    die "$USER_NAME cannot use $STATE (is a parent directory closed?)"

  for i in "${!HOSTS[@]}"; do
    name=${HOSTS[$i]}
    port=$((BASE_PORT + i + 1))
    # sshd needs an absolute -f path: with a relative one, connections reset.
    "$SSHD" -f "$STATE/$name/sshd_config" -E "$STATE/$name/sshd.log" ||
      die "sshd $name failed: $(tail -n 5 "$STATE/$name/sshd.log" 2>/dev/null)"
    wait_port "$port" || die "sshd $name does not answer on 127.0.0.1:$port"
  done

  # One agent per run, as oneadmin, holding the client key.
  local agent_out agent_pid
  agent_out=$(as_user ssh-agent -s -a "$STATE/agent.sock")
  agent_pid=$(sed -n 's/^SSH_AGENT_PID=\([0-9]*\);.*/\1/p' <<<"$agent_out")
  [[ -n $agent_pid ]] || die "ssh-agent did not start: $agent_out"
  echo "$agent_pid" >"$STATE/agent.pid"
  as_user env SSH_AUTH_SOCK="$STATE/agent.sock" ssh-add -q "$STATE/keys/id_ed25519"

  # oneadmin's ~/.ssh/config: read on every hop (all hosts share this disk).
  install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$ssh_dir"
  if [[ ! -e $STATE/ssh_config.orig && ! -e $STATE/ssh_config.none ]]; then
    if [[ -f $cfg ]] && ! grep -qxF "$MARKER" "$cfg"; then
      cp -p "$cfg" "$STATE/ssh_config.orig"
    else
      : >"$STATE/ssh_config.none"
    fi
  fi
  {
    echo "$MARKER"
    echo "# state: $STATE"
    for i in "${!HOSTS[@]}"; do
      printf 'Host %s\n  HostName 127.0.0.1\n  Port %s\n  HostKeyAlias %s\n  User %s\n' \
        "${HOSTS[$i]}" "$((BASE_PORT + i + 1))" "${HOSTS[$i]}" "$USER_NAME"
    done
    cat <<CFG
Host *
  UserKnownHostsFile $STATE/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  CheckHostIP no
  UpdateHostKeys no
  BatchMode yes
  IdentitiesOnly no
  IdentityFile none
  ConnectTimeout 10
  LogLevel ERROR
CFG
  } >"$cfg.tmp"
  chown "$USER_NAME:" "$cfg.tmp"
  chmod 0600 "$cfg.tmp"
  mv -f "$cfg.tmp" "$cfg"

  {
    echo "ONEBACKUP_STATE_DIR=$STATE"
    echo "SSH_AUTH_SOCK=$STATE/agent.sock"
    echo "SSH_AGENT_PID=$agent_pid"
    echo "ONEBACKUP_SSH_CONFIG=$cfg"
    echo "ONEBACKUP_SSH_KEY=$STATE/keys/id_ed25519"
    echo "ONEBACKUP_HOSTS=\"${HOSTS[*]}\""
    for i in "${!HOSTS[@]}"; do
      echo "ONEBACKUP_PORT_${HOSTS[$i]}=$((BASE_PORT + i + 1))"
    done
  } >"$STATE/env"
  chown "$USER_NAME:" "$STATE/env"
  log "up: ${HOSTS[*]} on 127.0.0.1:$((BASE_PORT + 1))-$((BASE_PORT + ${#HOSTS[@]})); source $STATE/env"
}

cmd_down() {
  local home cfg
  stop_daemons
  home=$(getent passwd "$USER_NAME" | cut -d: -f6) || return 0
  cfg=$home/.ssh/config
  if [[ -f $STATE/ssh_config.orig ]]; then
    cp -p "$STATE/ssh_config.orig" "$cfg"
    rm -f -- "$STATE/ssh_config.orig"
  elif [[ -e $STATE/ssh_config.none ]]; then
    if [[ -f $cfg ]] && grep -qxF "$MARKER" "$cfg"; then
      rm -f -- "$cfg"
    fi
    rm -f -- "$STATE/ssh_config.none"
  fi
  log "down: $STATE"
}

[[ $# -eq 2 ]] || usage
[[ $(id -u) -eq 0 ]] || die "must run as root"
[[ $2 =~ ^[A-Za-z0-9._/-]+$ ]] || die "STATE_DIR may hold only [A-Za-z0-9._/-]"
if [[ $1 == down && ! -d $2 ]]; then
  log "down: no $2"
  exit 0
fi
mkdir -p -- "$2"
STATE=$(cd -- "$2" && pwd -P)
# Unix socket paths (the agent's) are limited to 107 bytes.
((${#STATE} + 11 <= 107)) || die "STATE_DIR path too long: $STATE"

case $1 in
  up) cmd_up ;;
  down) cmd_down ;;
  *) usage ;;
esac
