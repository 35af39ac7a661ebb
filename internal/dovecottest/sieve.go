package dovecottest

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
)

// SieveScripts returns the names of user's Sieve scripts on the instance,
// sorted, and the active one's ("" when none is active), read with
// `doveadm sieve list` (no ManageSieve involved).
func (in *Instance) SieveScripts(ctx context.Context, user string) (names []string, active string, err error) {
	out, err := in.Doveadm(ctx, "-f", "tab", "sieve", "list", "-u", user)
	if err != nil {
		return nil, "", err
	}
	if len(out) == 0 {
		return nil, "", nil
	}
	// The tab formatter: a "script<TAB>active" header, then one line per
	// script with "ACTIVE" or nothing after the tab.
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) == 0 || lines[0] != "script\tactive" {
		return nil, "", fmt.Errorf("dovecottest: doveadm sieve list: unexpected output %q", out)
	}
	for _, l := range lines[1:] {
		name, flag, ok := strings.Cut(l, "\t")
		if !ok || (flag != "" && flag != "ACTIVE") {
			return nil, "", fmt.Errorf("dovecottest: doveadm sieve list: unexpected line %q", l)
		}
		names = append(names, name)
		if flag == "ACTIVE" {
			active = name
		}
	}
	sort.Strings(names)
	return names, active, nil
}

// SieveScript returns the content of user's Sieve script name on the
// instance, read with `doveadm sieve get`.
func (in *Instance) SieveScript(ctx context.Context, user, name string) (string, error) {
	out, err := in.Doveadm(ctx, "-f", "pager", "sieve", "get", "-u", user, name)
	if err != nil {
		return "", err
	}
	// The pager formatter prints the field name, then the script as it is.
	const head = "sieve script:\n"
	if !bytes.HasPrefix(out, []byte(head)) {
		return "", fmt.Errorf("dovecottest: doveadm sieve get: unexpected output %q", out)
	}
	return string(out[len(head):]), nil
}
