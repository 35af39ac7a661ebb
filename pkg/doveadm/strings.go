package doveadm

import (
	"bufio"
	"io"
)

// maxStateKept is the largest dsync state kept: no doveadm takes a larger
// one back (Dovecot 2.3's HTTP API refuses a request over 1 MiB, 2.4's a
// string over 32 KiB, Linux an argument over 128 KiB), so the next dsync
// of a user with a larger one is a full one whether it is kept or not.
// It is some 17,000 mailboxes.
const maxStateKept = 1 << 20

// dropped stands for a JSON string longer than a stringCap's limit: a
// NUL, which no dsync state (base64) holds.
const dropped = "\x00"

// stringCap passes JSON text through, every string longer than limit
// bytes (as written, escapes included) replaced by the string dropped. A
// doveadm reply carries the dsync state as one string, 60 bytes a
// mailbox: read so, a user with 150,000 mailboxes (a reply of 9 MiB) no
// longer makes the reply too large to read, nor takes its size in memory
// for a state no doveadm would take back. Input that is not JSON comes
// out as garbled as it went in, for the parser to refuse.
type stringCap struct {
	r     *bufio.Reader
	limit int
	// longest is the length of the longest string dropped.
	longest int

	out []byte  // what is ready to be read
	one [1]byte // out's room for a byte outside strings
	str []byte  // the string being read, its opening quote included
	in  bool    // inside a string
	esc bool    // after a backslash in a string
	n   int     // bytes of the current string, as written
}

func newStringCap(r io.Reader, limit int) *stringCap {
	return &stringCap{r: bufio.NewReaderSize(r, 32<<10), limit: limit}
}

func (s *stringCap) Read(p []byte) (int, error) {
	for len(s.out) == 0 {
		c, err := s.r.ReadByte()
		if err != nil {
			if s.in && s.n <= s.limit {
				// Cut off inside a string: what came of it, for the
				// parser to call truncated.
				s.out, s.str, s.in = s.str, nil, false
				continue
			}
			return 0, err
		}
		s.next(c)
	}
	n := copy(p, s.out)
	s.out = s.out[n:]
	return n, nil
}

func (s *stringCap) next(c byte) {
	if !s.in {
		if c == '"' {
			s.in, s.esc, s.n, s.str = true, false, 0, []byte{c}
			return
		}
		s.one[0] = c
		s.out = s.one[:]
		return
	}
	switch {
	case s.esc:
		s.esc = false
	case c == '\\':
		s.esc = true
	case c == '"':
		s.in = false
		if s.n > s.limit {
			s.longest = max(s.longest, s.n)
			s.out, s.str = []byte(`"\u0000"`), nil
			return
		}
		s.out, s.str = append(s.str, c), nil
		return
	}
	s.n++
	if s.n <= s.limit {
		s.str = append(s.str, c)
	}
}
