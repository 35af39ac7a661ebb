module github.com/dovewarden/dovewarden-knative/functions/sync

go 1.26.0

require (
	github.com/alicebob/miniredis/v2 v2.40.0
	github.com/cloudevents/sdk-go/v2 v2.16.2
	github.com/dovewarden/dovewarden-knative v0.0.0-00010101000000-000000000000
	github.com/prometheus/client_golang v1.25.0
)
