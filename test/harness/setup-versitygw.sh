#!/usr/bin/env bash
# Build versitygw, a small S3 server that serves a plain directory, for the restic S3 backend
# tests (no Ceph here). Apache-2.0, from the Go module proxy, into $ONEBACKUP_CACHE/bin.
# Idempotent: when the binary is already there at this version it only checks and exits.
# Needs no root and no Debian package beyond Go (/usr/local/go/bin).
set -euo pipefail

VERSITYGW_VERSION=1.8.0
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/../.." && pwd)
CACHE=${ONEBACKUP_CACHE:-$REPO_ROOT/.cache}

log() { printf 'setup-versitygw: %s\n' "$*" >&2; }

bin=$CACHE/bin/versitygw

if ! command -v go >/dev/null 2>&1; then
  PATH=$PATH:/usr/local/go/bin
fi

# The module version recorded in the binary's build info is the authority (`versitygw --version`
# shows only what -ldflags stamped into it, "git" by default).
has_version() {
  [[ -x $bin ]] && go version -m "$bin" 2>/dev/null |
    grep -Eq "^[[:space:]]*mod[[:space:]]+github\.com/versity/versitygw[[:space:]]+v${VERSITYGW_VERSION//./\\.}[[:space:]]"
}

if has_version; then
  log "versitygw $VERSITYGW_VERSION already built"
  exit 0
fi

log "building versitygw $VERSITYGW_VERSION (takes a minute or two)"
mkdir -p "$CACHE/bin"
# Run outside the project module so its go.mod plays no part. versitygw's Makefile stamps its
# version with -X; do the same so `versitygw --version` tells the truth too.
(cd / && GOBIN=$CACHE/bin go install \
  -ldflags="-s -w -X main.Version=v$VERSITYGW_VERSION" \
  "github.com/versity/versitygw/cmd/versitygw@v$VERSITYGW_VERSION")
has_version || {
  log "built versitygw is not version $VERSITYGW_VERSION:"
  go version -m "$bin" >&2 || true
  exit 1
}
log "done"
