#!/usr/bin/env bash
# Runs every test of the project, exactly as CI does (.ci/run calls this
# through `make test`). Tests that need real Redis or Dovecot install them
# (Debian packages, a Dovecot 2.4 tree made with mmdebstrap and cached
# outside the repository) when missing, so a fresh machine needs only Go
# and root.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's time is printed after the run (also when a step fails), to
# see where the suite's minutes go.
step_name="" step_start=$SECONDS timings=()
step_done() {
	[ -n "$step_name" ] && timings+=("$(printf '%5d s  %s' $((SECONDS - step_start)) "$step_name")")
	step_name=""
}
step() { step_done; step_name=$*; step_start=$SECONDS; printf '\n== %s\n' "$*"; }
times_report() {
	step_done
	printf '\n== time per step (%d s in all)\n' "$SECONDS"
	printf '%s\n' "${timings[@]}"
}
# `background NAME CMD...` starts a step beside the others, its output
# kept aside; `finish` waits for such steps and prints each one's output
# and time. Only the installs below run so: the test steps run one after
# another, since on this 2-core machine the race step beside the go test
# step slowed the tests against real Dovecot two- to threefold.
bg_names=() bg_pids=() bg_logs=()
background() {
	local name=$1 log
	shift
	log=$(mktemp)
	printf '\n== %s: started in the background\n' "$name"
	(
		start=$(date +%s) rc=0
		"$@" || rc=$?
		echo $(($(date +%s) - start)) >"$log.time"
		exit "$rc"
	) >"$log" 2>&1 &
	bg_names+=("$name") bg_pids+=($!) bg_logs+=("$log")
}
finish() {
	local i rc failed=0
	for i in "${!bg_pids[@]}"; do
		rc=0
		wait "${bg_pids[$i]}" || rc=$?
		[ "$rc" = 0 ] || failed=1
		printf '\n== %s (ran in the background, exit %d)\n' "${bg_names[$i]}" "$rc"
		cat "${bg_logs[$i]}"
		timings+=("$(printf '%5s s  %s (in the background)' "$(cat "${bg_logs[$i]}.time" 2>/dev/null || echo '?')" "${bg_names[$i]}")")
		rm -f "${bg_logs[$i]}" "${bg_logs[$i]}.time"
	done
	bg_names=() bg_pids=() bg_logs=()
	return "$failed"
}
trap 'finish || true; times_report' EXIT
. scripts/lib/debian.sh

# Dovecot 2.3 and 2.4 and redis-server, which the tests install on first
# use, are installed from the start when missing: on a fresh machine the
# downloads (two minutes here) then overlap vet and the build instead of
# holding up the first test that needs them. The tests wait on the same
# locks.
background "test dependencies (Dovecot 2.3 and 2.4, redis-server)" go run ./internal/cmd/testdeps

step "gofmt"
bad=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$bad" ]; then
	echo "gofmt would change:"; echo "$bad"; exit 1
fi

# The function folders are modules of their own (the func CLI builds each
# alone); go.work builds them against this tree.
modules=(./... github.com/dovewarden/dovewarden-knative/functions/...)

step "go vet"
go vet "${modules[@]}"

step "go test -race (unit, integration with real redis-server and Dovecot, e2e; under the race detector)"
# One run, under the race detector: the broker's lanes, the sync handler,
# the sweep and local mode run goroutines side by side, and most tests
# wait on Dovecot, redis-server or timers, so the detector costs little
# time; a second run without it cost minutes. The dovewarden binary the
# e2e suite runs is built without it. -race needs cgo, which Go turns off
# when no C compiler is on PATH, as on a fresh Debian: gcc, and libc6-dev
# for the C headers (gcc only recommends it).
ensure gcc gcc libc6-dev
go test -race -count=1 -timeout 15m "${modules[@]}"
step_done
finish

step "manifests (Knative's own API types; a module of its own)"
(cd config/validate && GOWORK=off go vet ./... && GOWORK=off go test -count=1 ./...)

step "alerts and dashboard (promtool, Grafana's own types; a module of its own)"
(cd config/monitoring && GOWORK=off go vet ./... && GOWORK=off go test -count=1 ./...)

step "fuzz (short run over the seed corpus and beyond)"
# Budgets are counts of inputs, a few seconds each here (longer runs are
# by hand, with FUZZTIME): with a duration,
# Go 1.26's fuzzing coordinator can fail a run that found nothing with
# "context deadline exceeded" as the time runs out (golang/go#75804).
# FUZZTIME overrides every budget (a count such as 100000x, or a duration).
# A target that was renamed or removed fails the step: go test -fuzz
# passes with "no fuzz tests to fuzz" when nothing matches.
# Each package's targets are listed once (a listing links its test binary:
# seconds each).
declare -A fuzz_listed=()
fuzz() {
	if [ -z "${fuzz_listed[$2]+set}" ]; then
		fuzz_listed[$2]=$(go test -list '^Fuzz' "$2")
	fi
	if ! grep -qx "$1" <<<"${fuzz_listed[$2]}"; then
		echo "fuzz: $2 has no fuzz target $1" >&2; return 1
	fi
	go test -run '^$' -fuzz "^$1\$" -fuzztime "${FUZZTIME:-$3}" "$2"
}
fuzz FuzzPipeline ./pkg/ingest 15000x
fuzz FuzzHandler ./pkg/ingest 10000x
# The fast decoders and encoders against encoding/json and the SDK.
fuzz FuzzParseMatchesEncodingJSON ./pkg/dovecot 25000x
# Redis URLs never show their password, in errors or logs.
fuzz FuzzConnValidate ./pkg/state 25000x
# Any URL in an error or a log: a password typed with '/', '?' or '#' in it.
fuzz FuzzRedactURL ./pkg/config 100000x
fuzz FuzzFromChange ./pkg/contract 5000x
fuzz FuzzDecodeData ./pkg/contract 20000x
fuzz FuzzWriteReply ./pkg/ingest 7500x
# An administrator's list of users (local mode's excluded users).
fuzz FuzzParse ./pkg/userlist 10000x
# The embedded broker's ingress and manifest loader. (config/validate's
# fuzz targets against Knative's code run their seeds with the manifests;
# their instrumented build takes minutes, so longer runs are by hand.)
fuzz FuzzIngress ./pkg/broker 5000x
fuzz FuzzLoad ./pkg/broker 5000x
# What a stopped broker saved for the next start (--spool-file).
fuzz FuzzDecodeSpool ./pkg/broker 10000x
# The sync function's receiver: any request gets a status with a reason.
fuzz FuzzServeHTTP ./pkg/syncer 10000x
# What a doveadm server answers, and that no error shows its password.
fuzz FuzzHTTPSyncReply ./pkg/doveadm 2500x
# doveadm's user listing against encoding/json; the host-map file, whose
# errors never show a secret of its variables or files.
fuzz FuzzDecodeUserList ./pkg/doveadm 25000x
fuzz FuzzParseHostMap ./pkg/doveadm 25000x
# --dsync-exclude-mailboxes: only what dsync can be given.
fuzz FuzzParseExcludeMailboxes ./pkg/doveadm 15000x
# Mailbox names from clients' commands, against an RFC 3501 encoder.
fuzz FuzzDecodeMUTF7 ./pkg/dovecot 25000x
# CA files against x509.CertPool.AppendCertsFromPEM.
fuzz FuzzParseCAs ./pkg/config 50000x
