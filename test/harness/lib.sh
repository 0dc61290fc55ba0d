# Shared by the harness's setup scripts (sourced, not run).

# apt_install PACKAGE…: install the Debian packages that are missing (apt-get update only then),
# without letting package scripts start daemons: there is no init system to own them.
apt_install() {
  local p status missing=()
  for p in "$@"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    log "packages already installed"
    return 0
  fi
  log "installing: ${missing[*]}"
  local tmp_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    tmp_policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$tmp_policy"
    chmod 0755 "$tmp_policy"
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?
  [[ -z $tmp_policy ]] || rm -f -- "$tmp_policy"
  return "$rc"
}
