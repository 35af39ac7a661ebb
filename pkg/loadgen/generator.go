package loadgen

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"time"
)

// Generator produces Dovecot exporter request bodies. Event number i is a
// pure function of the seed and i (plus the end time the caller passes), so
// concurrent workers can share one Generator without locks and a run is
// reproducible whatever its concurrency.
//
// Templates are compiled once; Append only copies literal bytes and formats
// numbers, so it allocates nothing when dst has room.
type Generator struct {
	seed      uint64
	users     uint64
	hosts     uint64
	userWidth int
	cum       []uint64   // cumulative mix weights, parallel to tmpls
	tmpls     []template // one per mix entry with a positive weight
}

// NewGenerator compiles the templates for cfg's Version, Mix, Users, Hosts
// and Seed; zero fields take the package defaults.
func NewGenerator(cfg Config) (*Generator, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validateEvents(); err != nil {
		return nil, err
	}
	g := &Generator{
		seed:      cfg.Seed,
		users:     uint64(cfg.Users),
		hosts:     uint64(cfg.Hosts),
		userWidth: max(4, len(strconv.Itoa(cfg.Users))),
	}
	var total uint64
	for _, e := range cfg.Mix {
		if e.Weight == 0 {
			continue
		}
		k, err := lookupKind(e.Name)
		if err != nil {
			return nil, err
		}
		t, err := compile(k.source(cfg.Version))
		if err != nil {
			return nil, fmt.Errorf("template for %s: %w", e.Name, err)
		}
		total += uint64(e.Weight)
		g.cum = append(g.cum, total)
		g.tmpls = append(g.tmpls, t)
	}
	return g, nil
}

// slot is a value filled in per event.
type slot uint8

const (
	slotNone slot = iota
	slotHost
	slotStart
	slotEnd
	slotLastRun
	slotUser
	slotLocalIP
	slotRemoteIP
	slotRPort
	slotSession
	slotLSession
	slotDur
	slotRunning
	slotLockWait
	slotTag
	slotMailbox
	slotDest
	slotFnum
	slotUID
	slotUID2
	slotSeq
	slotUIDValidity
	slotSize
	slotVSize
	slotIn
	slotOut
	slotMsgID
)

var slotNames = map[string]slot{
	"host": slotHost, "start": slotStart, "end": slotEnd, "lastrun": slotLastRun,
	"user": slotUser, "localip": slotLocalIP, "remoteip": slotRemoteIP, "rport": slotRPort,
	"session": slotSession, "lsession": slotLSession, "dur": slotDur, "running": slotRunning,
	"lockwait": slotLockWait, "tag": slotTag, "mailbox": slotMailbox, "dest": slotDest,
	"fnum": slotFnum, "uid": slotUID, "uid2": slotUID2, "seq": slotSeq,
	"uidvalidity": slotUIDValidity, "size": slotSize, "vsize": slotVSize,
	"in": slotIn, "out": slotOut, "msgid": slotMsgID,
}

// segment is a literal followed by a slot (slotNone after the last one).
type segment struct {
	lit  string
	slot slot
}

type template []segment

func compile(src string) (template, error) {
	var t template
	for {
		i := strings.Index(src, "${")
		if i < 0 {
			return append(t, segment{lit: src}), nil
		}
		j := strings.IndexByte(src[i:], '}')
		if j < 0 {
			return nil, fmt.Errorf("unterminated slot at %q", src[i:])
		}
		s, ok := slotNames[src[i+2:i+j]]
		if !ok {
			return nil, fmt.Errorf("unknown slot %q", src[i+2:i+j])
		}
		t = append(t, segment{lit: src[:i], slot: s})
		src = src[i+j+1:]
	}
}

// Mailboxes events name, INBOX weighted as users' traffic is; the mUTF-7
// name is Entwürfe. None needs JSON escaping or IMAP quoting.
var (
	mailboxes = [16]string{"INBOX", "INBOX", "INBOX", "INBOX", "INBOX", "INBOX", "INBOX", "INBOX",
		"INBOX", "Sent", "Sent", "Drafts", "Trash", "Archive", "Archive/2025", "Entw&APw-rfe"}
	destinations = [4]string{"Trash", "Archive", "Archive/2025", "Junk"}
)

// event holds what several slots of one event must agree on.
type event struct {
	k    uint64 // per-event hash; independent slot values derive from it
	user uint64
	host uint64
	sess uint64 // per-session hash: a user keeps a session for a while
	end  time.Time
	dur  uint64 // microseconds
}

// Append appends event number i, which ended at end, to dst.
func (g *Generator) Append(dst []byte, i uint64, end time.Time) []byte {
	k := mix64(g.seed + (i+1)*golden)
	ev := event{k: k, end: end.UTC().Truncate(time.Microsecond)}
	ev.user = reduce(mix64(k^0x75736572), g.users)
	ev.host = reduce(mix64(g.seed^(ev.user+1)*0x686f7374), g.hosts)
	// About eight events per user share a session.
	ev.sess = mix64(g.seed ^ (ev.user+1)*golden ^ mix64(i/g.users/8+1))
	h := mix64(k ^ 0x647572)
	ev.dur = 20 + h&1023
	if h>>10&7 == 0 {
		ev.dur *= 16 // the odd slow command
	}
	for _, s := range g.tmpls[g.pick(k)] {
		dst = append(dst, s.lit...)
		if s.slot != slotNone {
			dst = g.appendSlot(dst, s.slot, &ev)
		}
	}
	return dst
}

func (g *Generator) pick(k uint64) int {
	x := reduce(mix64(k^0x6b696e64), g.cum[len(g.cum)-1])
	for i, c := range g.cum {
		if x < c {
			return i
		}
	}
	return len(g.cum) - 1
}

const (
	golden = 0x9e3779b97f4a7c15
	b64    = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)

func (g *Generator) appendSlot(dst []byte, s slot, ev *event) []byte {
	h := slotHash(ev.k, s)
	switch s {
	case slotHost:
		dst = append(dst, "mail-"...)
		dst = strconv.AppendUint(dst, ev.host+1, 10)
		return append(dst, ".loadgen.test"...)
	case slotStart:
		return appendTime(dst, ev.end.Add(-time.Duration(ev.dur)*time.Microsecond))
	case slotEnd:
		return appendTime(dst, ev.end)
	case slotLastRun:
		return appendTime(dst, ev.end.Add(-time.Duration(running(ev.dur))*time.Microsecond))
	case slotUser:
		dst = append(dst, "loaduser"...)
		return appendPadded(dst, ev.user+1, g.userWidth)
	case slotLocalIP:
		return appendIP(dst, 10, 0, byte((ev.host+1)>>8), byte(ev.host+1))
	case slotRemoteIP:
		return appendIP(dst, 172, 16+byte(ev.sess>>40)&15, byte(ev.sess>>48), byte(ev.sess>>56))
	case slotRPort:
		return strconv.AppendUint(dst, 1024+ev.sess%64000, 10)
	case slotSession:
		return appendB64(appendB64(dst, ev.sess, 10), mix64(ev.sess), 6)
	case slotLSession:
		// LMTP session IDs are 22 characters, IMAP ones 16.
		return appendB64(appendB64(appendB64(dst, h, 10), mix64(h), 10), mix64(h+1), 2)
	case slotDur:
		return strconv.AppendUint(dst, ev.dur, 10)
	case slotRunning:
		return strconv.AppendUint(dst, running(ev.dur), 10)
	case slotLockWait:
		return strconv.AppendUint(dst, h%(ev.dur/4+1), 10)
	case slotTag:
		for j := range 4 {
			dst = append(dst, 'A'+byte(ev.sess>>(8*j))%26)
		}
		return strconv.AppendUint(dst, 2+h%500, 10)
	case slotMailbox:
		return append(dst, mailboxes[h&15]...)
	case slotDest:
		return append(dst, destinations[h&3]...)
	case slotFnum:
		return strconv.AppendUint(dst, h%1000, 10)
	case slotUID, slotUID2:
		return strconv.AppendUint(dst, 1+h%50000, 10)
	case slotSeq:
		return strconv.AppendUint(dst, 1+h%5000, 10)
	case slotUIDValidity:
		return strconv.AppendUint(dst, 1700000000+mix64(ev.user)%90000000, 10)
	case slotSize, slotVSize:
		size := 300 + slotHash(ev.k, slotSize)%120000
		if s == slotVSize {
			size += size / 40 // CRLF line endings
		}
		return strconv.AppendUint(dst, size, 10)
	case slotIn:
		return strconv.AppendUint(dst, 2+h%60, 10)
	case slotOut:
		return strconv.AppendUint(dst, h%400, 10)
	case slotMsgID:
		return strconv.AppendUint(dst, h, 36)
	}
	panic(fmt.Sprintf("loadgen: slot %d not handled", s))
}

// slotHash gives each slot of an event its own value, the same wherever
// the slot recurs (cmd_args and cmd_human_args agree).
func slotHash(k uint64, s slot) uint64 {
	g := uint64(golden)
	return mix64(k + uint64(s)*g)
}

// running is the command's running_usecs: a little less than its duration.
func running(dur uint64) uint64 { return dur - dur/32 - 1 }

// appendTime formats t (UTC) as Dovecot does: RFC 3339, microseconds, Z.
// It is hand-rolled because it runs three times per event.
func appendTime(dst []byte, t time.Time) []byte {
	y, mo, d := t.Date()
	hh, mm, ss := t.Clock()
	dst = appendPadded(dst, uint64(y), 4)
	dst = append(dst, '-')
	dst = appendPadded(dst, uint64(mo), 2)
	dst = append(dst, '-')
	dst = appendPadded(dst, uint64(d), 2)
	dst = append(dst, 'T')
	dst = appendPadded(dst, uint64(hh), 2)
	dst = append(dst, ':')
	dst = appendPadded(dst, uint64(mm), 2)
	dst = append(dst, ':')
	dst = appendPadded(dst, uint64(ss), 2)
	dst = append(dst, '.')
	dst = appendPadded(dst, uint64(t.Nanosecond()/1000), 6)
	return append(dst, 'Z')
}

// appendPadded appends v in decimal, zero-padded to width digits.
func appendPadded(dst []byte, v uint64, width int) []byte {
	var buf [20]byte
	i := len(buf)
	for v >= 10 || i > len(buf)-width+1 {
		i--
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	i--
	buf[i] = byte('0' + v)
	return append(dst, buf[i:]...)
}

func appendIP(dst []byte, a, b, c, d byte) []byte {
	for j, x := range [4]byte{a, b, c, d} {
		if j > 0 {
			dst = append(dst, '.')
		}
		dst = strconv.AppendUint(dst, uint64(x), 10)
	}
	return dst
}

// appendB64 appends n base64 characters taken from the bits of x.
func appendB64(dst []byte, x uint64, n int) []byte {
	for range n {
		dst = append(dst, b64[x&63])
		x >>= 6
	}
	return dst
}

// mix64 is SplitMix64's finalizer: a cheap, well-mixed 64-bit hash.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// reduce maps x uniformly onto [0, n) (Lemire's multiply-shift).
func reduce(x, n uint64) uint64 {
	hi, _ := bits.Mul64(x, n)
	return hi
}
