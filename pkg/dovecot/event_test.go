package dovecot

import (
	"strings"
	"testing"
	"time"
)

// The APPEND event of DOVECOT.md, as Dovecot 2.4 posts it.
const append24 = `{"event":"imap_command_finished","hostname":"vm","start_time":"2026-11-28T23:45:46.022459Z","end_time":"2026-11-28T23:45:46.025497Z","categories":["service:imap","imap"],"fields":{"user":"u1","local_ip":"127.0.0.1","local_port":20343,"remote_ip":"127.0.0.1","remote_port":48880,"session":"oD2Gxl5h8L5/AAAB","duration":2998,"cmd_tag":"BOJP5","cmd_name":"APPEND","reason_code":["imap:cmd_append"],"mailbox":"INBOX","cmd_input_name":"APPEND","cmd_args":"INBOX <107 byte literal>","cmd_human_args":"INBOX <107 byte literal>","tagged_reply_state":"OK","tagged_reply":"OK [APPENDUID 1795909547 1] Append completed.","last_run_time":"2026-11-28T23:45:46.024130Z","running_usecs":2900,"lock_wait_usecs":147,"net_in_bytes":120,"net_out_bytes":88}}`

func TestParse_Dovecot24Append(t *testing.T) {
	ev, err := Parse([]byte(append24))
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 11, 28, 23, 45, 46, 25497000, time.UTC)
	if !ev.EndTime.Equal(want) {
		t.Errorf("end time %v, want %v", ev.EndTime, want)
	}
	if ev.Name != IMAPCommandFinished || ev.Hostname != "vm" || ev.Fields.User != "u1" ||
		ev.Fields.CmdName != "APPEND" || ev.Fields.Mailbox != "INBOX" || ev.Fields.TaggedReplyState != "OK" {
		t.Errorf("parsed %+v", ev)
	}
	if !ev.HasCategory("service:imap") || ev.HasCategory("service:doveadm") {
		t.Errorf("categories %v", ev.Categories)
	}
}

func TestParse_UnixTimestamps(t *testing.T) {
	// Without time-rfc3339 Dovecot writes seconds since the epoch.
	ev, err := Parse([]byte(`{"event":"mail_delivery_finished","hostname":"h","start_time":1795909546.5,"end_time":1795909546.750001,"fields":{"user":"u"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.EndTime.UnixMicro(); got != 1795909546750001 {
		t.Errorf("end time %d µs", got)
	}
	if got := ev.StartTime.UnixMilli(); got != 1795909546500 {
		t.Errorf("start time %d ms", got)
	}
}

func TestParse_Errors(t *testing.T) {
	for name, tc := range map[string]struct{ body, want string }{
		"empty":         {"", "empty body"},
		"spaces":        {"  \n", "empty body"},
		"not json":      {"hello", "invalid JSON at byte 1"},
		"truncated":     {`{"event":"x"`, "invalid JSON"},
		"array":         {`[1,2]`, "want a JSON object (one Dovecot event), got an array"},
		"string":        {`"e"`, "want a JSON object (one Dovecot event), got a string"},
		"fields array":  {`{"event":"e","fields":[]}`, `field "fields": want an object, got an array`},
		"categories":    {`{"event":"e","categories":"imap"}`, `field "categories": want an array of strings, got a string`},
		"category":      {`{"event":"e","categories":[1]}`, `field "categories": want a string, got a number`},
		"two objects":   {`{"event":"a"} {"event":"b"}`, "invalid JSON"},
		"no event":      {`{"hostname":"h"}`, `missing "event"`},
		"user a number": {`{"event":"e","fields":{"user":5}}`, `field "fields.user": want a string, got a number`},
		"bad time":      {`{"event":"e","end_time":"yesterday"}`, "not RFC 3339"},
		"negative time": {`{"event":"e","end_time":-5}`, "neither RFC 3339"},
		"huge time":     {`{"event":"e","end_time":1e300}`, "neither RFC 3339"},
		"time object":   {`{"event":"e","end_time":{}}`, "neither RFC 3339"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse(%q) error %v, want it to contain %q", tc.body, err, tc.want)
			}
			if strings.Contains(err.Error(), "dovecot.") {
				t.Errorf("Parse(%q) error %v names a Go type", tc.body, err)
			}
		})
	}
}

func TestParse_IgnoresUnknownFields(t *testing.T) {
	ev, err := Parse([]byte(`{"event":"e","future":{"a":[1,2,{"b":null}]},"fields":{"user":"u","new_thing":[1],"bytes_in":3}}`))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Fields.User != "u" {
		t.Errorf("user %q", ev.Fields.User)
	}
}

func TestDecodeMUTF7(t *testing.T) {
	for in, want := range map[string]string{
		"Archive":                         "Archive",
		"&-":                              "&",
		"Tom &- Jerry":                    "Tom & Jerry",
		"Entw&APw-rfe":                    "Entwürfe",
		"&ZeVnLIqe-":                      "日本語",
		"~peter/mail/&U,BTFw-/&ZeVnLIqe-": "~peter/mail/台北/日本語",
		"&2D3eAA-":                        "😀", // a surrogate pair
		"&,,0-":                           "\ufffd",
	} {
		got, err := DecodeMUTF7(in)
		if err != nil || got != want {
			t.Errorf("DecodeMUTF7(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	// Lone or reversed surrogates are no characters.
	for _, bad := range []string{"&", "&Zm9v", "&!!-", "&AA-", "&2D0-", "&3gA-", "&3gDYPQ-"} {
		if got, err := DecodeMUTF7(bad); err == nil {
			t.Errorf("DecodeMUTF7(%q) = %q, want an error", bad, got)
		}
	}
}
