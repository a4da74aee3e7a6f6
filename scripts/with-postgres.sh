#!/usr/bin/env bash
# Runs CMD with a throwaway PostgreSQL server; SNAPFERRY_TEST_PG_URL names it. See scripts/with-postgres.ts.
set -euo pipefail
exec node --import tsx "$(dirname "$0")/with-postgres.ts" "$@"
