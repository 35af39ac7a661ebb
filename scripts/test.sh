#!/usr/bin/env bash
# Runs every test of the project, exactly as CI does (.ci/run calls this
# through `make test`). Tests that need real Redis or Dovecot install them
# (Debian packages, a Dovecot 2.4 tree made with mmdebstrap and cached
# outside the repository) when missing, so a fresh machine needs only Go
# and root.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

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

step "manifests (Knative's own API types; a module of its own)"
(cd config/validate && GOWORK=off go test -count=1 ./...)

step "fuzz (short run over the seed corpus and beyond)"
go test -run '^$' -fuzz '^FuzzPipeline$' -fuzztime "${FUZZTIME:-10s}" ./pkg/ingest
go test -run '^$' -fuzz '^FuzzHandler$' -fuzztime "${FUZZTIME:-10s}" ./pkg/ingest
# The fast decoders and encoders against encoding/json and the SDK.
go test -run '^$' -fuzz '^FuzzParseMatchesEncodingJSON$' -fuzztime "${FUZZTIME_SHORT:-5s}" ./pkg/dovecot
go test -run '^$' -fuzz '^FuzzFromChange$' -fuzztime "${FUZZTIME_SHORT:-5s}" ./pkg/contract
go test -run '^$' -fuzz '^FuzzDecodeData$' -fuzztime "${FUZZTIME_SHORT:-5s}" ./pkg/contract
go test -run '^$' -fuzz '^FuzzWriteReply$' -fuzztime "${FUZZTIME_SHORT:-5s}" ./pkg/ingest
# The embedded broker's ingress and manifest loader. (config/validate's
# fuzz targets against Knative's code run their seeds with the manifests;
# their instrumented build takes minutes, so longer runs are by hand.)
go test -run '^$' -fuzz '^FuzzIngress$' -fuzztime "${FUZZTIME_SHORT:-5s}" ./pkg/broker
go test -run '^$' -fuzz '^FuzzLoad$' -fuzztime "${FUZZTIME_SHORT:-5s}" ./pkg/broker
# What a doveadm server answers, and that no error shows its password.
go test -run '^$' -fuzz '^FuzzHTTPSyncReply$' -fuzztime "${FUZZTIME_SHORT:-5s}" ./pkg/doveadm
