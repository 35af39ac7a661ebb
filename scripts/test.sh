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
# Dovecot 2.3 and 2.4 and redis-server, which the tests install on first
# use, are installed from the start, in the background, when missing: on
# a fresh machine the downloads (two minutes here) then overlap vet and
# the build instead of holding up the first test that needs them. The
# tests wait on the same locks. Its output is printed after the go test
# step (or when the run stops earlier).
deps_log=$(mktemp)
go run ./internal/cmd/testdeps >"$deps_log" 2>&1 &
deps_pid=$!
deps_report() {
	[ -n "$deps_pid" ] || return 0
	local rc=0
	wait "$deps_pid" || rc=$?
	deps_pid=""
	printf '\n== test dependencies, installed in the background (exit %d)\n' "$rc"
	cat "$deps_log"
	rm -f "$deps_log"
}
trap 'deps_report; times_report' EXIT
. scripts/lib/debian.sh

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

step "go test (unit, integration with real redis-server and Dovecot)"
go test -count=1 -timeout 15m "${modules[@]}"
deps_report

step "go test -race (the packages and commands, again under the race detector)"
# The broker's lanes, the sync handler, the sweep and local mode run
# goroutines side by side; the Dovecot and e2e suites are left out, as
# slower here and covered above, and so are the packages' tests against
# real Dovecot (TestIntegrationDovecot*: over half of this step's time,
# spent waiting on Dovecot; the same code runs here under the unit tests'
# fake doveadm). -race needs cgo, which Go turns off when no C compiler is
# on PATH, as on a fresh Debian: gcc, and libc6-dev for the C headers (gcc
# only recommends it).
ensure gcc gcc libc6-dev
go test -race -count=1 -timeout 10m -skip '^TestIntegrationDovecot' ./pkg/... ./cmd/...

step "manifests (Knative's own API types; a module of its own)"
(cd config/validate && GOWORK=off go vet ./... && GOWORK=off go test -count=1 ./...)

step "alerts and dashboard (promtool, Grafana's own types; a module of its own)"
(cd config/monitoring && GOWORK=off go vet ./... && GOWORK=off go test -count=1 ./...)

step "fuzz (short run over the seed corpus and beyond)"
# Budgets are counts of inputs, about 5-10 s each here: with a duration,
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
fuzz FuzzPipeline ./pkg/ingest 30000x
fuzz FuzzHandler ./pkg/ingest 20000x
# The fast decoders and encoders against encoding/json and the SDK.
fuzz FuzzParseMatchesEncodingJSON ./pkg/dovecot 50000x
# Redis URLs never show their password, in errors or logs.
fuzz FuzzConnValidate ./pkg/state 50000x
# Any URL in an error or a log: a password typed with '/', '?' or '#' in it.
fuzz FuzzRedactURL ./pkg/config 200000x
fuzz FuzzFromChange ./pkg/contract 10000x
fuzz FuzzDecodeData ./pkg/contract 40000x
fuzz FuzzWriteReply ./pkg/ingest 15000x
# An administrator's list of users (local mode's excluded users).
fuzz FuzzParse ./pkg/userlist 20000x
# The embedded broker's ingress and manifest loader. (config/validate's
# fuzz targets against Knative's code run their seeds with the manifests;
# their instrumented build takes minutes, so longer runs are by hand.)
fuzz FuzzIngress ./pkg/broker 10000x
fuzz FuzzLoad ./pkg/broker 10000x
# What a stopped broker saved for the next start (--spool-file).
fuzz FuzzDecodeSpool ./pkg/broker 20000x
# The sync function's receiver: any request gets a status with a reason.
fuzz FuzzServeHTTP ./pkg/syncer 20000x
# What a doveadm server answers, and that no error shows its password.
fuzz FuzzHTTPSyncReply ./pkg/doveadm 5000x
# doveadm's user listing against encoding/json; the host-map file, whose
# errors never show a secret of its variables or files.
fuzz FuzzDecodeUserList ./pkg/doveadm 50000x
fuzz FuzzParseHostMap ./pkg/doveadm 50000x
# --dsync-exclude-mailboxes: only what dsync can be given.
fuzz FuzzParseExcludeMailboxes ./pkg/doveadm 30000x
# Mailbox names from clients' commands, against an RFC 3501 encoder.
fuzz FuzzDecodeMUTF7 ./pkg/dovecot 50000x
# CA files against x509.CertPool.AppendCertsFromPEM.
fuzz FuzzParseCAs ./pkg/config 100000x
