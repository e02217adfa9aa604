module fedcredit.test/interop

go 1.19

require golang.org/x/mod v0.0.0

// Offline build against the Debian package golang-golang-x-mod-dev (no module proxy).
replace golang.org/x/mod => /usr/share/gocode/src/golang.org/x/mod
