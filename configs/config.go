// Package configs reads passgate's YAML configuration.
//
// It is the first thing a login depends on: cmd/passgate loads one Config,
// validates it and translates it into the Options of each package on the
// path (listeners in proxy/, the decision in policy/, the store and
// upstreams in backends/). No other package imports configs.
//
// The folder also holds the example configuration files, the systemd unit
// and snippets for Dovecot, Postfix and OpenLDAP; a test loads every example.
package configs

import "time"

// Config is the whole configuration file. Every key is optional except
// where a listener needs it; Load fills in the defaults.
type Config struct {
	Store   Store    `yaml:"store"`
	KeyFile string   `yaml:"key_file"`
	TLS     TLS      `yaml:"tls"`
	Policy  Policy   `yaml:"policy"`
	IMAP    IMAP     `yaml:"imap"`
	SMTP    SMTP     `yaml:"smtp"`
	LDAP    LDAP     `yaml:"ldap"`
	Web     Web      `yaml:"web"`
	Metrics Listener `yaml:"metrics"`
	Log     Log      `yaml:"log"`
	Audit   Audit    `yaml:"audit"`
}

// Audit configures how long the audit trail is kept (store.AuditRetention).
type Audit struct {
	// LoginRetention keeps login events (millions a day); default 30d,
	// as Entra keeps sign-in logs.
	LoginRetention Duration `yaml:"login_retention"`
	// ChangeRetention keeps account changes (app passwords created or
	// deleted, MFA states, settings); default 400d.
	ChangeRetention Duration `yaml:"change_retention"`
}

// Store selects the database.
type Store struct {
	Driver string `yaml:"driver"` // sqlite (default) | postgres
	DSN    string `yaml:"dsn"`    // a file for sqlite; a URL for postgres
}

// TLS is the server certificate shared by every listener.
type TLS struct {
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	MinVersion string `yaml:"min_version"` // "1.0" | "1.1" | "1.2" (default) | "1.3"
}

// Policy configures the decision.
type Policy struct {
	TrustedNetworks []string `yaml:"trusted_networks"` // CIDRs allowed plaintext auth
	// ProxyNetworks are the load balancers (within TrustedNetworks) whose
	// every connection starts with a PROXY protocol header.
	ProxyNetworks   []string `yaml:"proxy_networks"`
	FailureDelay    Duration `yaml:"failure_delay"` // default 2s
	MaxAppPasswords int      `yaml:"max_app_passwords"`
	DefaultMFA      string   `yaml:"default_mfa"` // disabled (default) | enabled | enforced
	Realms          []string `yaml:"realms"`      // domains the upstream folds onto local names: alice@example.test is alice
	// MFAGroups are the DNs of directory groups (groupOfNames member or
	// posixGroup memberUid, read from ldap.upstream with its service
	// account) whose members are enforced without a row in the store.
	MFAGroups   []string      `yaml:"mfa_groups"`
	MFAGroupTTL Duration      `yaml:"mfa_group_ttl"` // how long a group's members are cached; default 60s
	Limits      ProtocolLimit `yaml:"limits"`
	Lockout     Lockout       `yaml:"lockout"`
}

// Lockout configures step 2 of the decision (policy.Lockout). It is on
// by default (10, 50 and 100 failures in 24h; 60s, doubled with each
// lockout in a row up to 1h); all thresholds 0 switch it off.
type Lockout struct {
	MaxFailures        int      `yaml:"max_failures"`         // per (user, address); default 10
	MaxAddressFailures int      `yaml:"max_address_failures"` // per address, sparing users who logged in from it; default 50
	MaxUserFailures    int      `yaml:"max_user_failures"`    // per user, sparing addresses the user logged in from; default 100
	Window             Duration `yaml:"window"`               // default 24h
	Duration           Duration `yaml:"duration"`             // the first lockout; default 60s
	MaxDuration        Duration `yaml:"max_duration"`         // the longest, after doubling; default 1h
}

// ProtocolLimit bounds what a client may do before it has logged in.
type ProtocolLimit struct {
	PreLoginTimeout Duration `yaml:"pre_login_timeout"` // default 60s
	MaxLineLength   int      `yaml:"max_line_length"`   // default 8192
	MaxLiteral      int      `yaml:"max_literal"`       // default 8192
	MaxCommands     int      `yaml:"max_commands"`      // before login; default 50
	MaxAuthFailures int      `yaml:"max_auth_failures"` // per connection; default 5
	// Connections before login, across IMAP, SMTP and LDAP; 0: no cap.
	MaxConnectionsPerAddress int `yaml:"max_connections_per_address"` // per client address (IPv6: /64); default 20
	MaxPreLoginConnections   int `yaml:"max_pre_login_connections"`   // in all; default 1000
}

// Listener is an address to listen on; empty means off.
type Listener struct {
	Listen string `yaml:"listen"`
}

// Web configures the Security info portal (proxy/portal).
type Web struct {
	Listen string `yaml:"listen"` // HTTPS with tls.cert_file; plain HTTP only on loopback; empty: off
	// PublicURL is the address users type, e.g. https://passgate.example.test:
	// the WebAuthn relying party is its host, and cross-origin checks accept
	// its origin. Default: https:// (http:// without a certificate) and
	// web.listen, with localhost for a loopback address.
	PublicURL            string   `yaml:"public_url"`
	Verify               string   `yaml:"verify"`                // imap (default) | ldap | store: how the primary password is checked
	RegistrationNetworks []string `yaml:"registration_networks"` // CIDRs; empty: a first second factor may be registered from anywhere
	SessionIdle          Duration `yaml:"session_idle"`          // default 15m
	SessionAbsolute      Duration `yaml:"session_absolute"`      // default 8h
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug | info (default) | warn | error
	Format string `yaml:"format"` // json (default for serve) | text
}

// IMAP configures the IMAP listener and its upstream.
type IMAP struct {
	Listen    string       `yaml:"listen"`     // STARTTLS; empty: off
	ListenTLS string       `yaml:"listen_tls"` // implicit TLS; empty: off
	Upstream  IMAPUpstream `yaml:"upstream"`
}

// IMAPUpstream is the IMAP server passgate logs in to.
type IMAPUpstream struct {
	Addresses          []string `yaml:"addresses"`            // tried in order
	TLS                string   `yaml:"tls"`                  // none | starttls | implicit
	CAFile             string   `yaml:"ca_file"`              // empty: system roots
	ServerName         string   `yaml:"server_name"`          // name checked in the certificate; default: host of the address
	Login              string   `yaml:"login"`                // master | passthrough
	MasterUser         string   `yaml:"master_user"`          //
	MasterPasswordFile string   `yaml:"master_password_file"` //
	MasterStyle        string   `yaml:"master_style"`         // authzid | separator
	Separator          string   `yaml:"separator"`            // default "*"
	ForwardClient      string   `yaml:"forward_client"`       // id | proxy | none
	DialTimeout        Duration `yaml:"dial_timeout"`         // default 5s
}

// SMTP configures the SMTP submission listener and its upstream.
type SMTP struct {
	Listen          string       `yaml:"listen"`
	ListenTLS       string       `yaml:"listen_tls"`
	Hostname        string       `yaml:"hostname"`          // name in the greeting; default: system host name
	MaxMessageBytes int64        `yaml:"max_message_bytes"` // default: upstream's SIZE, else 50 MiB
	MaxRecipients   int          `yaml:"max_recipients"`    // default 100
	LegacyAuthLine  bool         `yaml:"legacy_auth_line"`  // also advertise "AUTH=PLAIN LOGIN"
	Upstream        SMTPUpstream `yaml:"upstream"`
}

// SMTPUpstream is the submission server passgate hands messages to.
type SMTPUpstream struct {
	Addresses          []string `yaml:"addresses"`
	TLS                string   `yaml:"tls"` // none | starttls | implicit
	CAFile             string   `yaml:"ca_file"`
	ServerName         string   `yaml:"server_name"`
	Login              string   `yaml:"login"` // master | xclient | passthrough
	MasterUser         string   `yaml:"master_user"`
	MasterPasswordFile string   `yaml:"master_password_file"`
	ForwardClient      string   `yaml:"forward_client"` // xclient | proxy | none
	DialTimeout        Duration `yaml:"dial_timeout"`
}

// LDAP configures the LDAP listener and its upstream directory.
type LDAP struct {
	Listen               string       `yaml:"listen"`
	ListenTLS            string       `yaml:"listen_tls"`
	Mode                 string       `yaml:"mode"` // relay | bind-only
	UserDNTemplates      []string     `yaml:"user_dn_templates"`
	UPNDomains           []string     `yaml:"upn_domains"` // domains accepted in user@domain binds; empty: any
	AllowAnonymous       bool         `yaml:"allow_anonymous"`
	AllowUnauthenticated bool         `yaml:"allow_unauthenticated"`
	MaxMessageBytes      int          `yaml:"max_message_bytes"` // default 1 MiB
	Upstream             LDAPUpstream `yaml:"upstream"`
}

// LDAPUpstream is the directory passgate binds to.
type LDAPUpstream struct {
	URL                 string `yaml:"url"` // ldap:// or ldaps://
	TLS                 string `yaml:"tls"` // none | starttls (for ldap:// URLs)
	CAFile              string `yaml:"ca_file"`
	ServerName          string `yaml:"server_name"`
	ServiceDN           string `yaml:"service_dn"`
	ServicePasswordFile string `yaml:"service_password_file"`
}

// Duration is a time.Duration written as "2s" or "10m" in YAML.
type Duration time.Duration
