#!/usr/bin/env bash
# Benchmark of the ingest endpoint (docs/benchmarks.md): dovewarden loadgen
# drives one `dovewarden ingest` process whose Broker is a fast local sink
# (`dovewarden broker` with no Triggers: it accepts each CloudEvent over
# HTTP and routes it nowhere). Everything stays on 127.0.0.1.
#
#   scripts/bench-ingest.sh            # both runs, 20 s each
#   DURATION=60s scripts/bench-ingest.sh
#   TLS=1 scripts/bench-ingest.sh      # ingest serves HTTPS (a self-signed certificate made with openssl)
#   MIX=unfiltered scripts/bench-ingest.sh  # loadgen's --mix (default: what the shipped exporter filters send)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/answer-times.sh
duration=${DURATION:-20s}
mix=${MIX:-default}
# Refuse to start when something already answers on a port this script
# uses: the readiness checks below would take it for ours and measure it.
for port in 18080 18081; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "port $port on 127.0.0.1 is already taken; stop what listens there first" >&2
		exit 1
	fi
done
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
ingest=http://127.0.0.1:18080
tls=()
if [ "${TLS:-}" = 1 ]; then
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
		-addext subjectAltName=IP:127.0.0.1 -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
	tls=(--tls-cert-file "$tmp/cert.pem" --tls-key-file "$tmp/key.pem")
	ingest=https://127.0.0.1:18080
	# loadgen and curl trust it; Go reads SSL_CERT_FILE.
	export SSL_CERT_FILE="$tmp/cert.pem" CURL_CA_BUNDLE="$tmp/cert.pem"
fi
"$bin" ingest --listen 127.0.0.1:18080 --broker-url http://127.0.0.1:18081/ --log-level warn "${tls[@]}" 2>"$tmp/ingest.log" &
pids+=($!)
ingest_pid=$!
ready=
for _ in $(seq 100); do
	curl -fsS "$ingest/readyz" >/dev/null 2>&1 && curl -fsS http://127.0.0.1:18081/readyz >/dev/null 2>&1 && ready=1 && break
	sleep 0.1
done
# Ready, and ours: both processes still running (one that failed to bind
# exits), not another process answering on the port.
if [ -z "$ready" ] || ! kill -0 "${pids[0]}" 2>/dev/null || ! kill -0 "$ingest_pid" 2>/dev/null; then
	echo "dovewarden ingest or broker did not start:" >&2
	cat "$tmp/ingest.log" "$tmp/broker.log" >&2
	exit 1
fi

# run LOADGEN-ARGS...: one loadgen run, then ingest's own answer times.
run() {
	buckets "$ingest/metrics" >"$tmp/buckets0"
	"$bin" loadgen --url "$ingest/events" --mix "$mix" "$@"
	buckets "$ingest/metrics" >"$tmp/buckets1"
	answers "$tmp/buckets0" "$tmp/buckets1"
}

echo "== throughput: as fast as possible, 8 connections, $duration"
run --concurrency 8 --duration "$duration"
echo
echo "== latency at 2,000 events/s, 4 connections, $duration"
run --rate 2000 --concurrency 4 --duration "$duration"
echo
echo "== ingest process after the runs"
grep -E '^(VmHWM|VmRSS)' "/proc/$ingest_pid/status"
curl -fsS "$ingest/metrics" | grep -E '^dovewarden_ingest_(send_failures|requests_rejected)' || true
