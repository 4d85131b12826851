package configs

import "time"

// The defaults of every optional key, in one place. Load starts from
// Defaults() and lays the file on top, so a key written in the file (even
// as zero) always wins over its default.
const (
	DefaultStoreDriver     = "sqlite"
	DefaultStoreDSN        = "passgate.db"
	DefaultKeyFile         = "passgate.key"
	DefaultTLSMinVersion   = "1.2"
	DefaultFailureDelay    = 2 * time.Second
	DefaultMaxAppPasswords = 40
	DefaultMFA             = "disabled"
	DefaultMFAGroupTTL     = 60 * time.Second

	DefaultPreLoginTimeout = 60 * time.Second
	DefaultMaxLineLength   = 8192
	DefaultMaxLiteral      = 8192
	DefaultMaxCommands     = 50
	DefaultMaxAuthFailures = 5

	// Connections before login (README, "Connection limits"): Dovecot
	// allows 10 connections per user and address (mail_max_userip_connections)
	// and 1000 clients per login service (default_client_limit).
	DefaultMaxConnectionsPerAddress = 20
	DefaultMaxPreLoginConnections   = 1000

	// The lockout's defaults (README, "Lockout"): Entra smart lockout's
	// 10 failures then 60 s, growing; NIST SP 800-63B's at most 100
	// failures for one account.
	DefaultLockoutMaxFailures        = 10
	DefaultLockoutMaxAddressFailures = 50
	DefaultLockoutMaxUserFailures    = 100
	DefaultLockoutWindow             = 24 * time.Hour
	DefaultLockoutDuration           = 60 * time.Second
	DefaultLockoutMaxDuration        = time.Hour

	DefaultUpstreamTLS         = "starttls"
	DefaultIMAPLogin           = "master"
	DefaultSMTPLogin           = "xclient"
	DefaultMasterStyle         = "authzid"
	DefaultSeparator           = "*"
	DefaultIMAPForwardClient   = "id"
	DefaultSMTPForwardClient   = "xclient"
	DefaultDialTimeout         = 5 * time.Second
	DefaultSMTPMaxRecipients   = 100
	DefaultLDAPMode            = "relay"
	DefaultLDAPUpstreamTLS     = "none"
	DefaultLDAPMaxMessageBytes = 1 << 20
	DefaultLogLevel            = "info"
	DefaultWebVerify           = "imap"
	DefaultWebSessionIdle      = 15 * time.Minute
	DefaultWebSessionAbsolute  = 8 * time.Hour
	DefaultLoginRetention      = 30 * 24 * time.Hour
	DefaultChangeRetention     = 400 * 24 * time.Hour
)

// Defaults returns the configuration used when no file is given: SQLite in
// the working directory, every listener off, and the default of every
// optional key filled in.
func Defaults() *Config {
	return &Config{
		Store:   Store{Driver: DefaultStoreDriver, DSN: DefaultStoreDSN},
		KeyFile: DefaultKeyFile,
		TLS:     TLS{MinVersion: DefaultTLSMinVersion},
		Audit:   Audit{LoginRetention: Duration(DefaultLoginRetention), ChangeRetention: Duration(DefaultChangeRetention)},
		Policy: Policy{
			FailureDelay:    Duration(DefaultFailureDelay),
			MaxAppPasswords: DefaultMaxAppPasswords,
			DefaultMFA:      DefaultMFA,
			MFAGroupTTL:     Duration(DefaultMFAGroupTTL),
			Limits: ProtocolLimit{
				PreLoginTimeout: Duration(DefaultPreLoginTimeout),
				MaxLineLength:   DefaultMaxLineLength,
				MaxLiteral:      DefaultMaxLiteral,
				MaxCommands:     DefaultMaxCommands,
				MaxAuthFailures: DefaultMaxAuthFailures,

				MaxConnectionsPerAddress: DefaultMaxConnectionsPerAddress,
				MaxPreLoginConnections:   DefaultMaxPreLoginConnections,
			},
			Lockout: Lockout{
				MaxFailures:        DefaultLockoutMaxFailures,
				MaxAddressFailures: DefaultLockoutMaxAddressFailures,
				MaxUserFailures:    DefaultLockoutMaxUserFailures,
				Window:             Duration(DefaultLockoutWindow),
				Duration:           Duration(DefaultLockoutDuration),
				MaxDuration:        Duration(DefaultLockoutMaxDuration),
			},
		},
		IMAP: IMAP{Upstream: IMAPUpstream{
			TLS:           DefaultUpstreamTLS,
			Login:         DefaultIMAPLogin,
			MasterStyle:   DefaultMasterStyle,
			Separator:     DefaultSeparator,
			ForwardClient: DefaultIMAPForwardClient,
			DialTimeout:   Duration(DefaultDialTimeout),
		}},
		SMTP: SMTP{
			MaxRecipients: DefaultSMTPMaxRecipients,
			Upstream: SMTPUpstream{
				TLS:           DefaultUpstreamTLS,
				Login:         DefaultSMTPLogin,
				ForwardClient: DefaultSMTPForwardClient,
				DialTimeout:   Duration(DefaultDialTimeout),
			},
		},
		LDAP: LDAP{
			Mode:            DefaultLDAPMode,
			MaxMessageBytes: DefaultLDAPMaxMessageBytes,
			Upstream:        LDAPUpstream{TLS: DefaultLDAPUpstreamTLS},
		},
		Log: Log{Level: DefaultLogLevel},
		Web: Web{Verify: DefaultWebVerify, SessionIdle: Duration(DefaultWebSessionIdle), SessionAbsolute: Duration(DefaultWebSessionAbsolute)},
	}
}
