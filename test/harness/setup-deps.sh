#!/usr/bin/env bash
# Install what the test harness needs on a Debian 12 machine (run as root).
# Idempotent: on an already set-up machine it only checks and exits quickly.
#   - Debian packages (sshd, rsync, qemu-img, ...)
#   - restic 0.18.1 built from the Go module proxy into $ONEBACKUP_CACHE/bin
#   - user oneadmin and restic where OpenNebula's drivers expect it
set -euo pipefail

RESTIC_VERSION=0.18.1
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/../.." && pwd)
CACHE=${ONEBACKUP_CACHE:-$REPO_ROOT/.cache}

PACKAGES=(
  openssh-server openssh-client rsync qemu-utils procps util-linux
  coreutils findutils iproute2 passwd ca-certificates strace bc
)

log() { printf 'setup-deps: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root"
  exit 1
fi

# --- Debian packages -------------------------------------------------------
apt_install "${PACKAGES[@]}"

# --- restic ----------------------------------------------------------------
restic_bin=$CACHE/bin/restic
if [[ -x $restic_bin ]] && "$restic_bin" version 2>/dev/null | grep -q "restic $RESTIC_VERSION "; then
  log "restic $RESTIC_VERSION already built"
else
  if ! command -v go >/dev/null 2>&1; then
    PATH=$PATH:/usr/local/go/bin
  fi
  log "building restic $RESTIC_VERSION (takes a minute or two)"
  mkdir -p "$CACHE/bin"
  # Run outside the project module so its go.mod plays no part.
  (cd / && GOBIN=$CACHE/bin go install -ldflags='-s -w' \
    "github.com/restic/restic/cmd/restic@v$RESTIC_VERSION")
  "$restic_bin" version | grep -q "restic $RESTIC_VERSION " || {
    log "built restic reports the wrong version"
    exit 1
  }
fi

# Debian's restic 0.14 (the oldest output format the drivers support), unpacked into the cache
# for the compatibility test only: it is not installed on the PATH.
old_restic=$CACHE/restic-0.14/usr/bin/restic
if [[ ! -x $old_restic ]]; then
  log "fetching Debian's restic 0.14 for the compatibility test"
  dl=$(mktemp -d)
  (cd "$dl" && { apt-get download -q restic 2>/dev/null || { apt-get update -q && apt-get download -q restic; }; })
  dpkg-deb -x "$dl"/restic_*.deb "$CACHE/restic-0.14"
  rm -rf "$dl"
fi

# --- oneadmin and restic locations -----------------------------------------
if ! getent passwd oneadmin >/dev/null; then
  log "creating user oneadmin"
  useradd -r -m -d /var/lib/one -s /bin/bash oneadmin
fi
# useradd leaves the account locked ('!'), which sshd refuses even for keys.
if [[ $(getent shadow oneadmin | cut -d: -f2) != '*' ]]; then
  usermod -p '*' oneadmin
fi

install -d -o oneadmin -g oneadmin /var/lib/one /var/tmp/one
chown oneadmin:oneadmin /var/lib/one /var/tmp/one
for dest in /var/lib/one/remotes/datastore/restic/restic \
  /var/tmp/one/datastore/restic/restic; do
  dir=$(dirname -- "$dest")
  if [[ ! -d $dir ]]; then
    # Create each missing level owned by oneadmin.
    install -d -o oneadmin -g oneadmin "$dir"
    d=$dir
    while [[ $d != /var/lib/one && $d != /var/tmp/one ]]; do
      chown oneadmin:oneadmin "$d"
      d=$(dirname -- "$d")
    done
  fi
  if ! cmp -s "$restic_bin" "$dest"; then
    install -o oneadmin -g oneadmin -m 0755 "$restic_bin" "$dest"
  else
    chown oneadmin:oneadmin "$dest"
    chmod 0755 "$dest"
  fi
done

log "done"
