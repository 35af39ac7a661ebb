// Package dovecottest runs real Dovecot 2.3 and 2.4 instances on loopback
// for integration and end-to-end tests and tools.
//
// Dovecot 2.3 is the Debian bookworm package on the host; Dovecot 2.4 comes
// from Debian trixie in an mmdebstrap tree (DefaultRoot24, or the folder
// named by DOVEWARDEN_DOVECOT24_ROOT) and runs chrooted there, with the
// instance folder bind-mounted at the same path in a private mount
// namespace. Ensure installs whatever is missing (it needs root, and
// network access to Debian's mirror the first time).
//
// Every instance gets its own folder, config (rendered from the embedded
// templates), passwd-file users, log and free 127.0.0.1 ports, and runs in
// its own UTS namespace whose hostname is the instance name, so events
// exported by Dovecot carry that name. Mail belongs to the system user vmail
// (uid/gid 5000 where Ensure creates it; an existing vmail keeps its ids).
// Enabled for tests: IMAP METADATA (file dict), QUOTA (count
// backend; SETQUOTA works on 2.3 only), ACL (vfile), NOTIFY, doveadm over
// TCP and HTTP, ManageSieve (ManageSieveAddr; per-user scripts in ~/sieve
// with ~/.dovecot.sieve the active one, which doveadm sync replicates
// through Pigeonhole's doveadm plugin, with limits: TestSieveSync), and
// optionally an http-post event
// exporter. Sieve filtering at delivery (the LMTP sieve plugin) is not
// enabled.
//
// Dovecot 2.4 includes dovecot-sieve and dovecot-managesieved: Ensure
// rebuilds a tree made before they were added beside it and swaps it into
// place.
//
// A typical test:
//
//	in := dovecottest.StartT(t, dovecottest.Options{Version: "2.4", Name: "mail-a.test",
//		Users: map[string]string{"u1": "pass"}})
//	s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, "u1", "pass")
//	...
//	out, err := in.Doveadm(ctx, "mailbox", "status", "-u", "u1", "messages", "INBOX")
//	ms, err := dovecottest.LoginManageSieve(ctx, in.ManageSieveAddr, "u1", "pass")
//	err = ms.PutScript(ctx, "main", "keep;\r\n")
//	names, active, err := in.SieveScripts(ctx, "u1")
package dovecottest
