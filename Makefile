# The README's two commands: `make demo` and `make test`.
.PHONY: demo test build

## demo: the whole system in one process against two local Dovecot instances (as root)
demo: build
	go run ./internal/cmd/demo -bin bin/dovewarden

## test: every test, as CI runs it (installs redis-server and Dovecot when missing)
test:
	./scripts/test.sh

## build: the dovewarden binary, at ./bin/dovewarden
build:
	go build -o bin/dovewarden ./cmd/dovewarden
