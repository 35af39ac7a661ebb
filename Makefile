# The README's two commands: `make demo` and `make test`.
.PHONY: demo test build

## demo: the whole system in one process against two local Dovecot instances (as root);
## DEMO_FLAGS="-dovecot 2.4" for Dovecot 2.4 (on Debian 13, whose own Dovecot is 2.4). The built demo runs, not `go run`: go run
## exits 1 after Ctrl-C, which make would report as an error.
demo: build
	go build -o bin/demo ./internal/cmd/demo
	./bin/demo -bin bin/dovewarden $(DEMO_FLAGS)

## test: every test, as CI runs it (installs redis-server and Dovecot when missing)
test:
	./scripts/test.sh

## build: the dovewarden binary, at ./bin/dovewarden
build:
	go build -o bin/dovewarden ./cmd/dovewarden
