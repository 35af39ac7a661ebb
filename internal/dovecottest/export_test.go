package dovecottest

// GroupAlive exposes groupAlive to the external tests.
var GroupAlive = groupAlive
