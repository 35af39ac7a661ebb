#!/usr/bin/env bash
# Benchmark of `dovewarden local` (docs/benchmarks.md): dovewarden loadgen
# posts Dovecot events to the all-in-one process, whose sync handler runs
# every dsync against a zero-latency fake doveadm (internal/cmd/fakedoveadm)
# with the embedded Redis. Everything stays on 127.0.0.1.
#
#   scripts/bench-local.sh                 # 20 s runs, 60 s memory run
#   DURATION=10s SOAK=30s scripts/bench-local.sh
#   LOCAL_FLAGS="--workers 1 --queue-size 10000" scripts/bench-local.sh
#   REDIS_URL=redis://127.0.0.1:6379/0 scripts/bench-local.sh
#   LOCAL_GOGC=400 scripts/bench-local.sh  # GOGC of the local process only
#   MIX=unfiltered scripts/bench-local.sh  # loadgen's --mix (default: what the shipped exporter filters send)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/answer-times.sh
duration=${DURATION:-20s}
soak=${SOAK:-60s}
mix=${MIX:-default}
# Refuse to start when something already answers on a port this script
# uses: the readiness checks below would take it for ours and measure it.
for port in 18080 18081 18099; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "port $port on 127.0.0.1 is already taken; stop what listens there first" >&2
		exit 1
	fi
done
bin=bin/dovewarden
go build -o "$bin" ./cmd/dovewarden
go build -o bin/fakedoveadm ./internal/cmd/fakedoveadm

tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

bin/fakedoveadm --listen 127.0.0.1:18099 2>"$tmp/fake.log" &
pids+=($!)
sleep 0.2
if ! kill -0 "${pids[0]}" 2>/dev/null; then
	echo "the fake doveadm did not start (port 18099 taken?):" >&2
	cat "$tmp/fake.log" >&2
	exit 1
fi
# start_local FLAGS...: dovewarden local on 127.0.0.1:18080, ready.
start_local() {
	GOGC=${LOCAL_GOGC:-100} DOVEWARDEN_DOVEADM_PASSWORD=bench DOVEWARDEN_REDIS_URL=${REDIS_URL:-} "$bin" local --listen 127.0.0.1:18080 --log-level error \
		--doveadm-url http://127.0.0.1:18099/doveadm/v1 --destination tcp:127.0.0.1:1 "$@" >/dev/null 2>"$tmp/local.log" &
	local_pid=$!
	pids+=("$local_pid")
	for _ in $(seq 100); do
		if curl -fsS http://127.0.0.1:18080/readyz >/dev/null 2>&1; then
			# Ready, and ours: not another process on the port.
			kill -0 "$local_pid" 2>/dev/null && return
			break
		fi
		sleep 0.1
	done
	echo "dovewarden local did not start:" >&2
	cat "$tmp/local.log" >&2
	exit 1
}
# shellcheck disable=SC2086 # LOCAL_FLAGS is a list of flags
start_local ${LOCAL_FLAGS:-}

# cpu PID: CPU time (user + system) the process used so far, in clock
# ticks; children: what this script's finished children (loadgen) used.
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
children() { awk '{print $16 + $17}' "/proc/$$/stat"; }
# measured LOADGEN-ARGS...: one loadgen run, then the cores each process
# used during it, the dsyncs the fake doveadm ran, and ingest's own
# answer times.
measured() {
	local l0 f0 c0 s0 t0
	buckets http://127.0.0.1:18080/metrics >"$tmp/buckets0"
	l0=$(cpu "$local_pid") f0=$(cpu "${pids[0]}") c0=$(children) s0=$(curl -fsS http://127.0.0.1:18099/syncs)
	t0=$(date +%s.%N)
	"$bin" loadgen --url http://127.0.0.1:18080/events --mix "$mix" "$@" || true
	awk -v l="$(($(cpu "$local_pid") - l0))" -v f="$(($(cpu "${pids[0]}") - f0))" -v c="$(($(children) - c0))" \
		-v d="$(($(curl -fsS http://127.0.0.1:18099/syncs) - s0))" -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" -v t0="$t0" -v t1="$(date +%s.%N)" \
		'BEGIN { t = t1 - t0; printf "  cpu       dovewarden %.2f cores, loadgen %.2f, fake doveadm %.2f (of %d), over %.1f s; %d dsyncs (%.0f/s)\n", l/hz/t, c/hz/t, f/hz/t, n, t, d, d/t }'
	buckets http://127.0.0.1:18080/metrics >"$tmp/buckets1"
	answers "$tmp/buckets0" "$tmp/buckets1"
}

echo "== throughput: as fast as possible, 16 connections, $duration"
measured --concurrency 16 --duration "$duration" --allow-errors
echo
echo "== latency at 5,000 events/s, 8 connections, $duration"
measured --rate 5000 --concurrency 8 --duration "$duration" --allow-errors
echo
echo "== memory: 5,000 events/s for $soak, RSS of the local process every 10 s"
"$bin" loadgen --url http://127.0.0.1:18080/events --mix "$mix" --rate 5000 --concurrency 8 --duration "$soak" --allow-errors >"$tmp/soak.txt" &
lg=$!
while kill -0 "$lg" 2>/dev/null; do
	printf '%s  %s\n' "$(date +%T)" "$(grep VmRSS "/proc/$local_pid/status")"
	sleep 10
done
wait "$lg" || true
cat "$tmp/soak.txt"
grep VmHWM "/proc/$local_pid/status"
curl -fsS http://127.0.0.1:18080/metrics | grep -E '^dovewarden_(ingest_send_failures_total|broker_.*rejected.*|sync_dsyncs_total)' | grep -v ' 0$' || true

# Ingest alone: `dovewarden ingest` publishing to `dovewarden broker` with
# a Broker manifest and no Trigger, so every change is parsed, classified,
# stamped, sent and routed nowhere: the ceiling of the HTTP and ingest
# path on this machine, with loadgen beside it. (`local` refuses Triggers
# that route changes nowhere, so this takes the two-process shape.)
kill "$local_pid"
wait "$local_pid" 2>/dev/null || true
mkdir "$tmp/no-triggers"
cp config/broker/broker.yaml "$tmp/no-triggers/"
"$bin" broker --listen 127.0.0.1:18081 --triggers "$tmp/no-triggers" --log-level error 2>"$tmp/broker.log" &
pids+=($!)
broker_pid=$!
"$bin" ingest --listen 127.0.0.1:18080 --broker-url http://127.0.0.1:18081/ --log-level error 2>"$tmp/ingest.log" &
local_pid=$!
pids+=("$local_pid")
ready=
for _ in $(seq 100); do
	curl -fsS http://127.0.0.1:18080/readyz >/dev/null 2>&1 && curl -fsS http://127.0.0.1:18081/readyz >/dev/null 2>&1 && ready=1 && break
	sleep 0.1
done
if [ -z "$ready" ] || ! kill -0 "$local_pid" 2>/dev/null || ! kill -0 "$broker_pid" 2>/dev/null; then
	echo "dovewarden ingest or broker did not start:" >&2
	cat "$tmp/ingest.log" "$tmp/broker.log" >&2
	exit 1
fi
# measured counts the ingest process as "dovewarden"; the broker's share:
b0=$(cpu "$broker_pid") bt0=$(date +%s.%N)
echo
echo "== ingest alone (ingest and a broker with no Trigger): as fast as possible, 16 connections, $duration"
measured --concurrency 16 --duration "$duration"
echo
echo "== ingest alone: 5,000 events/s, 8 connections, $duration"
measured --rate 5000 --concurrency 8 --duration "$duration"
awk -v b="$(($(cpu "$broker_pid") - b0))" -v hz="$(getconf CLK_TCK)" -v t0="$bt0" -v t1="$(date +%s.%N)" \
	'BEGIN { printf "  broker process over both runs: %.2f cores\n", b/hz/(t1-t0) }'
