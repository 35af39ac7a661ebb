package loadgen

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The default mix is what a Dovecot configured with the project's own
// exporter settings sends: every IMAP event in it passes the shipped
// imap_command_finished filter (a command it names, no BAD reply, a FETCH
// only when it fetches a body).
func TestDefaultMix_HoldsOnlyWhatTheShippedFiltersPass(t *testing.T) {
	for _, v := range []string{"2.3", "2.4"} {
		name := "../../config/dovecot/events-" + v + ".conf"
		conf, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		var filter string
		for line := range strings.SplitSeq(string(conf), "\n") {
			if l := strings.TrimSpace(line); strings.HasPrefix(l, "filter = event=imap_command_finished") {
				filter = l
			}
		}
		if !strings.Contains(filter, "NOT tagged_reply_state=BAD") {
			t.Fatalf("%s: the imap_command_finished filter changed; update the test: %q", name, filter)
		}
		allowed := map[string]bool{}
		for _, m := range regexp.MustCompile(`cmd_name=("[^"]+"|[A-Z]+)`).FindAllStringSubmatch(filter, -1) {
			allowed[strings.Trim(m[1], `"`)] = true
		}
		for _, e := range mustParseMix(DefaultMix) {
			k, err := lookupKind(e.Name)
			if err != nil {
				t.Fatal(err)
			}
			if k.imap == nil {
				continue
			}
			fetchOK := !strings.HasSuffix(k.imap.name, "FETCH") || strings.Contains(k.imap.args, "BODY[") ||
				strings.Contains(k.imap.args, "BINARY[") || strings.Contains(k.imap.args, "RFC822")
			if k.state == "BAD" || !allowed[k.imap.name] || !fetchOK {
				t.Errorf("Dovecot %s with %s never sends %s, yet DefaultMix has it", v, name, e.Name)
			}
		}
	}
}

// The former default stays available by name, and DefaultMix is it minus
// the events the filters leave out, at the same weights.
func TestParseMix_TakesTheNamedMixes(t *testing.T) {
	for name, want := range map[string]string{"unfiltered": UnfilteredMix, " Default ": DefaultMix} {
		m, err := ParseMix(name)
		if err != nil || m.String() != mustParseMix(want).String() {
			t.Errorf("ParseMix(%q) = %v, %v; want %s", name, m, err, want)
		}
	}
	unfiltered := mustParseMix(UnfilteredMix)
	for _, e := range mustParseMix(DefaultMix) {
		if !slices.Contains(unfiltered, e) {
			t.Errorf("DefaultMix's %s=%d is not in UnfilteredMix", e.Name, e.Weight)
		}
	}
}
