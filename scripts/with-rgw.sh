#!/usr/bin/env bash
# Runs a command with a real S3 endpoint for the S3 chunk store tests:
#   scripts/with-rgw.sh npm test -- chunkstore-s3
# Uses the Ceph RGW already running from the shared files' ceph-rgw/start-rgw.sh (scripts/shared-dir.sh) (state in $CEPH_CI_DIR,
# default /tmp/ceph-ci) if there is one; otherwise starts one (as root; installs Debian's ceph
# packages the first time) and stops it again when the command ends. Exports SNAPFERRY_TEST_S3_*
# from its s3.env for the command.
set -euo pipefail
cd "$(dirname "$0")/.."
RGW_DIR=${RGW_DIR:-"$(scripts/shared-dir.sh)/ceph-rgw"}
export CEPH_CI_DIR=${CEPH_CI_DIR:-/tmp/ceph-ci}

started=0
if ! { [ -f "$CEPH_CI_DIR/s3.env" ] && [ -f "$CEPH_CI_DIR/run/client.rgw.a.pid" ] && kill -0 "$(cat "$CEPH_CI_DIR/run/client.rgw.a.pid")" 2>/dev/null; }; then
  bash "$RGW_DIR/start-rgw.sh"
  started=1
fi
stop() { [ "$started" = 1 ] && bash "$RGW_DIR/stop-rgw.sh" || true; }
trap stop EXIT

# shellcheck disable=SC1091
. "$CEPH_CI_DIR/s3.env"
export SNAPFERRY_TEST_S3_ENDPOINT="$S3_ENDPOINT" SNAPFERRY_TEST_S3_ACCESS_KEY="$S3_ACCESS_KEY" \
  SNAPFERRY_TEST_S3_SECRET_KEY="$S3_SECRET_KEY" SNAPFERRY_TEST_S3_REGION="$S3_REGION"
"$@"
