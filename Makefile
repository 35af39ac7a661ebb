# The README's two commands: `make demo` and `make test`.
.PHONY: test build

## test: every test, as CI runs it (installs redis-server and Dovecot when missing)
test:
	./scripts/test.sh

## build: the dovewarden binary, at ./bin/dovewarden
build:
	go build -o bin/dovewarden ./cmd/dovewarden
