#!/bin/sh
# Rehearse the KV -> Postgres migration from any CI system (or a laptop).
#
# Reads production KV (never writes it) and writes only into a throwaway database:
#   REHEARSE_PG_URL  a scratch database you provide, or, when it is unset,
#   NEON_PROJECT_ID + NEON_API_KEY: a Neon branch is created with `neonctl` and deleted at the end
#                    (NEON_DATABASE default neondb, NEON_ROLE default neondb_owner).
# Also needed: KV_URL (the production KV URL; a read-only credential where the store offers one).
# Optional: MAX_REJECTS (default 0), MAX_REQUESTS (default 2500), REPORT_DIR (default
# rehearse-report), KVMIGRATE (the command, default kvmigrate).
#
# Exits with kvmigrate's exit code: 0 passed; 1 differences; 2 bad usage; 3 cannot connect;
# 4 the real run's forecast KV cost is over MAX_REQUESTS; 5 more rejects than MAX_REJECTS.
# The JSON report and its Markdown summary are in REPORT_DIR either way.
set -eu

: "${KV_URL:?set KV_URL to the production KV URL}"
MAX_REJECTS=${MAX_REJECTS:-0}
MAX_REQUESTS=${MAX_REQUESTS:-2500}
REPORT_DIR=${REPORT_DIR:-rehearse-report}
KVMIGRATE=${KVMIGRATE:-kvmigrate}
export KV_URL

branch=""
delete_branch() {
    if [ -n "$branch" ]; then
        neonctl branches delete "$branch" --project-id "$NEON_PROJECT_ID" >/dev/null \
            || echo "warning: could not delete the Neon branch $branch: delete it by hand" >&2
    fi
}
trap delete_branch EXIT
trap 'exit 130' INT TERM

if [ -n "${REHEARSE_PG_URL:-}" ]; then
    pg_url=$REHEARSE_PG_URL
else
    : "${NEON_PROJECT_ID:?set REHEARSE_PG_URL, or NEON_PROJECT_ID and NEON_API_KEY for a Neon branch}"
    : "${NEON_API_KEY:?set NEON_API_KEY (neonctl reads it)}"
    export NEON_API_KEY
    branch="kvmigrate-rehearse-$(date -u +%Y%m%d%H%M%S)-$$"
    neonctl branches create --project-id "$NEON_PROJECT_ID" --name "$branch" --output json >/dev/null
    pg_url=$(neonctl connection-string "$branch" --project-id "$NEON_PROJECT_ID" \
        --database-name "${NEON_DATABASE:-neondb}" --role-name "${NEON_ROLE:-neondb_owner}")
fi

mkdir -p "$REPORT_DIR"
status=0
$KVMIGRATE rehearse --pg-url "$pg_url" \
    --report "$REPORT_DIR/rehearse.json" --markdown "$REPORT_DIR/rehearse.md" \
    --max-rejects "$MAX_REJECTS" --max-requests "$MAX_REQUESTS" || status=$?

case $status in
    0) echo "rehearse passed: $REPORT_DIR/rehearse.md" >&2 ;;
    1) echo "rehearse FAILED: KV and Postgres differ (see $REPORT_DIR/rehearse.md)" >&2 ;;
    4) echo "rehearse FAILED: the real run would cost more than $MAX_REQUESTS KV requests" >&2 ;;
    5) echo "rehearse FAILED: more than $MAX_REJECTS records were rejected" >&2 ;;
    *) echo "rehearse stopped with exit $status (see the error above)" >&2 ;;
esac
exit "$status"
