module github.com/dovewarden/dovewarden-knative/functions/ingest

go 1.26.0

require github.com/dovewarden/dovewarden-knative v0.0.0-00010101000000-000000000000
