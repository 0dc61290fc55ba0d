#!/usr/bin/env bash
# Figures behind the default of RESTIC_PRUNE_MAX_UNUSED (spec W19): removing backups from a
# repository with `forget --prune` at the reference's --max-unused=0 against restic's default
# (5 %). A local repository (no ssh) of BENCH_SNAPS backups of a BENCH_DISK_MIB disk, each
# rewriting BENCH_CHANGE_PCT % of it; every second backup is removed, one `rm` at a time, as
# oned removes them. Prints the total wall time and the bytes prune wrote; asserts nothing.
set -euo pipefail
restic=${RESTIC:-/var/lib/one/remotes/datastore/restic/restic}
[[ -x $restic ]] || restic=$(command -v restic) || { echo "restic not found: run make deps" >&2; exit 1; }
snaps=${BENCH_SNAPS:-8} size_mib=${BENCH_DISK_MIB:-512} change_pct=${BENCH_CHANGE_PCT:-10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export RESTIC_PASSWORD=bench-password

mkdir -p "$work/src"
disk=$work/src/disk.0.0
head -c $((size_mib << 20)) /dev/urandom >"$disk"
"$restic" -q init --repo "$work/repo" >/dev/null
chunk_mib=$((size_mib * change_pct / 100))
ids=()
for ((i = 0; i < snaps; i++)); do
  # rewrite a different region each time
  dd if=/dev/urandom of="$disk" bs=1M count="$chunk_mib" seek=$(((i * chunk_mib) % (size_mib - chunk_mib))) conv=notrunc status=none
  ids+=("$("$restic" -q backup --repo "$work/repo" --json "$work/src" | sed -n 's/.*"snapshot_id":"\([0-9a-f]*\)".*/\1/p')")
done

# bytes restic wrote (wchar of a shell that has reaped it: Linux adds reaped children's I/O)
forget_wchar() { sh -c '"$@" >/dev/null; awk "/^wchar/ {print \$2}" /proc/$$/io' sh "$restic" -q forget "$@"; }
for unused in 0 default; do
  rm -rf "$work/r"
  cp -a "$work/repo" "$work/r"
  extra=()
  [[ $unused == default ]] || extra=(--max-unused="$unused")
  t0=$(date +%s.%N) bytes=0
  for ((i = 0; i < snaps; i += 2)); do
    bytes=$((bytes + $(forget_wchar --repo "$work/r" --prune "${extra[@]}" "${ids[$i]}")))
  done
  t1=$(date +%s.%N)
  printf 'max-unused=%-8s rm of %d of %d backups (%d MiB disk, %d %% changed each): %.1f s, prune wrote %d MiB, repository %s\n' \
    "$unused" $(((snaps + 1) / 2)) "$snaps" "$size_mib" "$change_pct" "$(echo "$t1 - $t0" | bc)" $((bytes >> 20)) "$(du -sh "$work/r" | cut -f1)"
done
