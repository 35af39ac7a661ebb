package config_test

import (
	"bytes"
	"testing"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// PEMCAs takes PEM CERTIFICATE blocks and nothing else: text before a
// block, or a block without its END line before the next one (whose CA
// would be left out with nothing said), is refused as text after the
// last block is.
func TestPEMCAs_NothingElse(t *testing.T) {
	a, b := newCA(t), newCA(t)
	endless := bytes.Replace(a, []byte("-----END CERTIFICATE-----"), nil, 1)
	for name, text := range map[string][]byte{
		"text after the last block":         append(append([]byte{}, a...), "trailing\n"...),
		"text before the first block":       append([]byte("leading\n"), a...),
		"text between two blocks":           append(append(append([]byte{}, a...), "between\n"...), b...),
		"a block without its END, then one": append(endless, b...),
	} {
		if _, err := config.PEMCAs(string(text)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := config.PEMCAs("\n" + string(a) + "\n" + string(b) + "\n"); err != nil {
		t.Errorf("two CAs with blank lines around: %v", err)
	}
}
