package loadgen

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// DefaultMix is what a Dovecot configured with the project's exporter
// settings (config/dovecot/events-2.3.conf and events-2.4.conf) sends: the
// events their filters let through, weighted as in UnfilteredMix. A steady
// share of flag changes and deliveries, some moves and expunges, rare
// mailbox management, and a failed CREATE (a NO reply passes the filter;
// only BAD ones are left out).
const DefaultMix = "UID STORE=15,STORE=2,APPEND=6,LMTP=12," +
	"UID MOVE=5,UID COPY=2,UID EXPUNGE=4,EXPUNGE=2," +
	"CREATE=1,RENAME=1,DELETE=1,SUBSCRIBE=1,POP3 DELE=2," +
	"CREATE:NO=1"

// UnfilteredMix approximates a mailbox server's exporter traffic when the
// filter lets everything through: DefaultMix plus the read-only IMAP
// commands (UID FETCH of flags, SELECT, NOOP, STATUS, LIST) and commands
// failing with NO or BAD that the shipped filters leave out, some 45% of
// the events, so an ingest that only acts on successful changes is
// exercised on both paths. It was the default before DefaultMix.
const UnfilteredMix = "UID FETCH=20,SELECT=10,NOOP=8,STATUS=3,LIST=2," +
	"UID STORE=15,STORE=2,APPEND=6,LMTP=12," +
	"UID MOVE=5,UID COPY=2,UID EXPUNGE=4,EXPUNGE=2," +
	"CREATE=1,RENAME=1,DELETE=1,SUBSCRIBE=1,POP3 DELE=2," +
	"CREATE:NO=1,SELECT:NO=1,UID STORE:BAD=1"

// namedMixes are the mixes ParseMix takes by name.
var namedMixes = map[string]string{"default": DefaultMix, "unfiltered": UnfilteredMix}

// Mix weights the kinds of event a run sends.
type Mix []MixEntry

// MixEntry is one kind of event and its relative weight. Name is an IMAP
// command as Dovecot spells cmd_name ("UID STORE"), optionally suffixed
// ":NO" or ":BAD" for a failed command, or one of "LMTP" (a delivery),
// "POP3 DELE" (a POP3 deletion) and "DOVEADM EXPUNGE" (an expunge made by
// doveadm/dsync, which ingest must ignore). See MixNames.
type MixEntry struct {
	Name   string
	Weight int
}

// Failure suffixes a mix name may carry.
const (
	suffixNO  = ":NO"
	suffixBAD = ":BAD"
)

// ParseMix reads "NAME=WEIGHT,NAME=WEIGHT,...", or the name of a mix:
// "default" (DefaultMix) or "unfiltered" (UnfilteredMix). Names are
// case-insensitive.
func ParseMix(s string) (Mix, error) {
	if named, ok := namedMixes[strings.ToLower(strings.TrimSpace(s))]; ok {
		s = named
	}
	var m Mix
	for part := range strings.SplitSeq(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		name, weight, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want NAME=WEIGHT", part)
		}
		w, err := strconv.Atoi(strings.TrimSpace(weight))
		if err != nil || w < 0 {
			return nil, fmt.Errorf("%q: weight must be a non-negative integer", part)
		}
		m = append(m, MixEntry{Name: normalizeName(name), Weight: w})
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

func mustParseMix(s string) Mix {
	m, err := ParseMix(s)
	if err != nil {
		panic(err)
	}
	return m
}

// String formats the mix as ParseMix reads it.
func (m Mix) String() string {
	var b strings.Builder
	for i, e := range m {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(e.Name)
		b.WriteByte('=')
		b.WriteString(strconv.Itoa(e.Weight))
	}
	return b.String()
}

func (m Mix) validate() error {
	if len(m) == 0 {
		return errors.New("empty")
	}
	total := 0
	seen := map[string]bool{}
	for _, e := range m {
		if _, err := lookupKind(e.Name); err != nil {
			return err
		}
		if seen[e.Name] {
			return fmt.Errorf("%q given twice", e.Name)
		}
		seen[e.Name] = true
		if e.Weight < 0 {
			return fmt.Errorf("%q: negative weight", e.Name)
		}
		if e.Weight > math.MaxInt-total {
			return fmt.Errorf("weights add up to more than %d", math.MaxInt)
		}
		total += e.Weight
	}
	if total <= 0 {
		return errors.New("all weights are zero")
	}
	return nil
}

// MixNames lists every name a Mix accepts, without the failure suffixes
// (every IMAP command also takes ":NO" and ":BAD").
func MixNames() []string {
	names := make([]string, 0, len(imapCommands)+len(otherKinds))
	for _, c := range imapCommands {
		names = append(names, c.name)
	}
	for _, k := range otherKinds {
		names = append(names, k.name)
	}
	return names
}

// normalizeName upper-cases and collapses blanks so "uid  store" matches.
func normalizeName(s string) string {
	return strings.Join(strings.Fields(strings.ToUpper(s)), " ")
}

// kind is a resolved mix name: an IMAP command with a reply state, or one
// of the other event kinds.
type kind struct {
	imap  *imapCommand
	state string // OK, NO or BAD for IMAP
	other *otherKind
}

func lookupKind(name string) (kind, error) {
	name = normalizeName(name)
	base, state := name, "OK"
	for _, suf := range []string{suffixNO, suffixBAD} {
		if b, ok := strings.CutSuffix(name, suf); ok {
			base, state = strings.TrimSpace(b), suf[1:]
		}
	}
	for i := range imapCommands {
		if imapCommands[i].name == base {
			return kind{imap: &imapCommands[i], state: state}, nil
		}
	}
	for i := range otherKinds {
		if otherKinds[i].name == base {
			if state != "OK" {
				return kind{}, fmt.Errorf("%q: only IMAP commands take :NO or :BAD", name)
			}
			return kind{other: &otherKinds[i]}, nil
		}
	}
	return kind{}, fmt.Errorf("unknown event kind %q (known: %s)", name, strings.Join(MixNames(), ", "))
}
