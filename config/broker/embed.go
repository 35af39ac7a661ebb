// Package brokerconfig holds the Broker and Trigger manifests of
// config/broker, embedded so that the embedded broker routes with exactly
// the manifests a cluster gets, with no files to ship beside the binary.
package brokerconfig

import "embed"

// FS holds every *.yaml manifest of this folder (the Broker and its
// Triggers), at the root of the file system.
//
//go:embed *.yaml
var FS embed.FS
