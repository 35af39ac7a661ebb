package state

import (
	"strings"
	"testing"
)

// TestCheckFields_RefusesARedisOlderThan62: the scripts use ZADD's LT
// option, which Redis before 6.2 refuses at every decision and every
// pending mark; such a server is refused at start, naming its version.
// A version that does not say (miniredis, a fork's own numbering) passes.
func TestCheckFields_RefusesARedisOlderThan62(t *testing.T) {
	for v, refused := range map[string]bool{
		"5.0.14": true, "6.0.16": true, "6.1.9": true,
		"6.2.0": false, "6.2.14": false, "7.0.15": false, "7.2.4": false, "10.0.0": false,
		"": false, "unknown": false, "7": false,
	} {
		f := map[string]string{"role": "master"}
		if v != "" {
			f["redis_version"] = v
		}
		_, err := checkFields(f)
		if refused != (err != nil) {
			t.Errorf("redis_version %q: %v, want refused %v", v, err, refused)
			continue
		}
		if refused && (!strings.Contains(err.Error(), "Redis "+v) || !strings.Contains(err.Error(), "6.2 or later")) {
			t.Errorf("redis_version %q: %v, want the version and the one needed named", v, err)
		}
	}
}
