#!/usr/bin/env bash
# Prints the directory of the team's shared files (../shared beside the checkout: the Ceph RGW
# scripts, the API notes). Found, in order: $SNAPFERRY_SHARED_DIR; ../shared; the shared/ beside
# the repository this one was cloned from, when that is a local path (a throwaway clone made with
# `git clone . "$(mktemp -d)"` has no ../shared of its own). Fails with a sentence saying where it
# looked.
set -euo pipefail
cd "$(dirname "$0")/.."
candidates=()
[ -n "${SNAPFERRY_SHARED_DIR:-}" ] && candidates+=("$SNAPFERRY_SHARED_DIR")
candidates+=("$(cd .. && pwd)/shared")
origin=$(git remote get-url origin 2>/dev/null || true)
origin=${origin#file://}
if [ -n "$origin" ] && [ -d "$origin" ]; then candidates+=("$(cd "$origin/.." && pwd)/shared"); fi
for dir in "${candidates[@]}"; do
  if [ -f "$dir/ceph-rgw/start-rgw.sh" ]; then
    echo "$dir"
    exit 0
  fi
done
echo "shared files (ceph-rgw/start-rgw.sh) not found; looked in: ${candidates[*]} (set SNAPFERRY_SHARED_DIR)" >&2
exit 1
