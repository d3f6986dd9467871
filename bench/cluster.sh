#!/usr/bin/env bash
# The normdiff scan of a multi-GB synthetic cache from local disk, from an S3 store on 127.0.0.1 (moto, via
# tools/s3_server.py), and on 1, 2 and 3 `diffsql worker`s on this machine; wall time of one `diffsql sql`
# process per query (checks on, verdicts kept), best of $REPEAT after a warm-up. Also prints, from EXPLAIN
# ANALYZE on 2 workers, the bytes each network stage moved. bench/README.md has the table.
#
#   bench/cluster.sh                 # TOKENS=600000 D=128 REPEAT=3
set -euo pipefail
cd "$(dirname "$0")/.."
DIFFSQL=${DIFFSQL:-${CARGO_TARGET_DIR:-$HOME/.cache/diffsql-target}/debug/diffsql}
TOKENS=${TOKENS:-600000}
D=${D:-128}
REPEAT=${REPEAT:-3}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# The S3 server lives while its stdin (a fifo we hold open) does.
mkfifo "$WORK/s3in"
python3 tools/s3_server.py bench <"$WORK/s3in" >"$WORK/endpoint" 2>/dev/null &
PIDS+=($!)
exec 9>"$WORK/s3in"
while [ ! -s "$WORK/endpoint" ]; do sleep 0.2; done
export AWS_ENDPOINT_URL=$(cat "$WORK/endpoint") AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench \
  AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true DIFFSQL_SPOOL="$WORK/spool"

SYNTH=(synth --tokens "$TOKENS" --d-model "$D" --seed 1)
"$DIFFSQL" "${SYNTH[@]}" --cache "$WORK/local" 2>&1 | tail -n 1
start=$(date +%s.%N)
"$DIFFSQL" "${SYNTH[@]}" --cache s3://bench/c 2>&1 | tail -n 1
echo "upload to the store: $(echo "$(date +%s.%N) - $start" | bc) s"
du -sh "$WORK/local" | sed 's/^/cache size: /'

WORKERS=()
for port in 50151 50152 50153; do
  "$DIFFSQL" worker --listen "127.0.0.1:$port" 2>/dev/null &
  PIDS+=($!)
  WORKERS+=("127.0.0.1:$port")
done
sleep 1

Q="SELECT layer, normdiff(base, ft) FROM acts GROUP BY layer ORDER BY layer"
best() { # best wall time of $REPEAT runs (after one warm-up) of diffsql sql with the given arguments
  "$DIFFSQL" sql --format csv "$@" -c "$Q" >"$WORK/answer" 2>"$WORK/err" || { cat "$WORK/err"; exit 1; }
  local b=""
  for _ in $(seq "$REPEAT"); do
    local s=$(date +%s.%N)
    "$DIFFSQL" sql --format csv "$@" -c "$Q" >/dev/null
    local t=$(echo "$(date +%s.%N) - $s" | bc)
    if [ -z "$b" ] || (( $(echo "$t < $b" | bc) )); then b=$t; fi
  done
  echo "$b"
}
joined() { local IFS=,; echo "${WORKERS[*]:0:$1}"; }

printf "%-10s %-10s %s\n" cache workers "best wall (s)"
for cache in "$WORK/local" s3://bench/c; do
  name=$([ "$cache" = s3://bench/c ] && echo store || echo disk)
  printf "%-10s %-10s %s\n" "$name" none "$(best --cache "$cache")"
  for n in 1 2 3; do
    printf "%-10s %-10s %s\n" "$name" "$n" "$(best --cache "$cache" --workers "$(joined "$n")")"
  done
done
echo "network stages on 2 workers (disk cache), from EXPLAIN ANALYZE:"
"$DIFFSQL" sql --cache "$WORK/local" --workers "$(joined 2)" -c "EXPLAIN ANALYZE $Q" \
  | grep -oE "(Network[A-Za-z]+Exec|Stage [0-9]+ ── tasks=[0-9]+)|output_bytes=[0-9.]+ [A-Za-z]+" | paste -sd' ' | fold -w 160
