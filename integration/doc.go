// Package integration proves passgate end to end: real Dovecot, Postfix,
// slapd and PostgreSQL started as throwaway instances (see testenv), real
// clients (go-imap's imapclient, go-smtp's client, go-ldap, curl, swaks,
// ldapsearch, Python's imaplib and smtplib), and the built passgate binary
// or its command line in process. It is not on the path of a login; it
// drives the whole path from outside. The benchmarks here compare passgate
// side by side with direct connections to the same servers.
package integration
