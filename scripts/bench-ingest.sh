#!/usr/bin/env bash
# Benchmark of the ingest endpoint (docs/benchmarks.md): dovewarden loadgen
# drives one `dovewarden ingest` process whose Broker is a fast local sink
# (`dovewarden broker` with no Triggers: it accepts each CloudEvent over
# HTTP and routes it nowhere). Everything stays on 127.0.0.1.
#
#   scripts/bench-ingest.sh            # both runs, 20 s each
#   DURATION=60s scripts/bench-ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-20s}
bin=bin/dovewarden
go build -o "$bin" ./cmd/dovewarden

tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

mkdir "$tmp/no-triggers"
cat >"$tmp/no-triggers/broker.yaml" <<'YAML'
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
YAML
"$bin" broker --listen 127.0.0.1:18081 --triggers "$tmp/no-triggers" --log-level warn 2>"$tmp/broker.log" &
pids+=($!)
"$bin" ingest --listen 127.0.0.1:18080 --broker-url http://127.0.0.1:18081/ --log-level warn 2>"$tmp/ingest.log" &
pids+=($!)
ingest_pid=$!
for _ in $(seq 100); do
	curl -fsS http://127.0.0.1:18080/readyz >/dev/null 2>&1 && curl -fsS http://127.0.0.1:18081/readyz >/dev/null 2>&1 && break
	sleep 0.1
done

echo "== throughput: as fast as possible, 8 connections, $duration"
"$bin" loadgen --url http://127.0.0.1:18080/events --concurrency 8 --duration "$duration"
echo
echo "== latency at 2,000 events/s, 4 connections, $duration"
"$bin" loadgen --url http://127.0.0.1:18080/events --rate 2000 --concurrency 4 --duration "$duration"
echo
echo "== ingest process after the runs"
grep -E '^(VmHWM|VmRSS)' "/proc/$ingest_pid/status"
curl -fsS http://127.0.0.1:18080/metrics | grep -E '^dovewarden_ingest_(send_failures|requests_rejected)' || true
