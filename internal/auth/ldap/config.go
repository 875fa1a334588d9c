package ldap

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
	"github.com/spf13/pflag"
)

// Config tells the provider how to reach the directory and where users and groups are.
// Errors name the server's flags (see AddFlags), the only way it is set.
type Config struct {
	// URL is ldaps://host[:port] or ldap://host[:port]; ldap:// needs StartTLS unless
	// AllowInsecure is set.
	URL string
	// StartTLS upgrades an ldap:// connection to TLS before anything is sent.
	StartTLS bool
	// AllowInsecure allows ldap:// without StartTLS: passwords then cross the network in
	// clear text. Only for a directory on the same host or a trusted link.
	AllowInsecure bool
	// CAFile holds the PEM certificates that verify the directory's certificate; empty means
	// the system's roots.
	CAFile string

	// BindDN and BindPasswordFile are the service account that searches for a user's entry
	// ("search then bind"). Without them, UserDNTemplate gives the user's DN directly.
	BindDN, BindPasswordFile string
	// UserBaseDN is where users are searched (subtree); UserFilter narrows the search, e.g.
	// (objectClass=inetOrgPerson); the user name is matched on UserAttribute: uid for
	// OpenLDAP, sAMAccountName (or userPrincipalName) for Active Directory. The value of
	// UserAttribute in the directory, not the name as typed, is the Flotilla user name.
	UserBaseDN, UserFilter, UserAttribute string
	// UserDNTemplate is the user's DN with {user} for the (DN-escaped) user name as the value
	// of UserAttribute, e.g. uid={user},ou=people,dc=example,dc=org: the user binds without a
	// service account, then reads their own entry (and groups) as themselves.
	UserDNTemplate string

	// GroupBaseDN is where groups are searched with GroupFilter, in which {dn} is the user's
	// DN and {user} the user name (both escaped), e.g. (&(objectClass=groupOfNames)(member={dn}))
	// or (&(objectClass=posixGroup)(memberUid={user})). GroupAttribute (default cn) is the
	// group name.
	GroupBaseDN, GroupFilter, GroupAttribute string
	// MemberOfAttribute, instead of GroupFilter, reads groups from an attribute of the
	// user's entry holding group DNs (memberOf in Active Directory and OpenLDAP's memberof
	// overlay); a group's name is the value of its DN's first component. With GroupBaseDN
	// set, groups outside it are ignored.
	MemberOfAttribute string

	// Timeout bounds one login's whole conversation with the directory: connecting, TLS,
	// binds and searches. Default 10s.
	Timeout time.Duration
	// MaxConnections bounds the logins talking to the directory at once (one connection
	// each); others wait, within their own deadline. Default 8.
	MaxConnections int

	// RefreshInterval is how often the groups of users holding a token are read again as the
	// service account (auth.Authenticator.RefreshGroups); 0 reads them only at login. Without
	// a service account they cannot be.
	RefreshInterval time.Duration

	// Logger receives warnings about the directory's configuration (e.g. a user name that
	// matches several entries); default slog.Default().
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultTimeout        = 10 * time.Second
	DefaultMaxConnections = 8
	DefaultUserAttribute  = "uid"
	DefaultGroupAttribute = "cn"
	// DefaultRefreshInterval bounds how long a user keeps the rights of a group the
	// directory took them out of.
	DefaultRefreshInterval = 15 * time.Minute
)

// AddFlags registers the server flags that fill c (all --ldap-*).
func AddFlags(f *pflag.FlagSet, c *Config) {
	f.StringVar(&c.URL, "ldap-url", "", "LDAP directory for password logins of provider ldap users: ldaps://host[:port], or ldap://host[:port] with --ldap-start-tls (empty: no LDAP logins)")
	f.BoolVar(&c.StartTLS, "ldap-start-tls", false, "upgrade the ldap:// connection with StartTLS")
	f.BoolVar(&c.AllowInsecure, "ldap-allow-insecure", false, "allow ldap:// without StartTLS; passwords then cross the network in clear text")
	f.StringVar(&c.CAFile, "ldap-ca-file", "", "PEM CA certificates that verify the directory's certificate (default: the system's)")
	f.StringVar(&c.BindDN, "ldap-bind-dn", "", "service account DN that searches for users' entries")
	f.StringVar(&c.BindPasswordFile, "ldap-bind-password-file", "", "file holding the service account's password")
	f.StringVar(&c.UserBaseDN, "ldap-user-base-dn", "", "where users are searched (subtree)")
	f.StringVar(&c.UserFilter, "ldap-user-filter", "", "filter that narrows the user search, e.g. (objectClass=inetOrgPerson)")
	f.StringVar(&c.UserAttribute, "ldap-user-attribute", DefaultUserAttribute, "attribute holding the user name: uid (OpenLDAP), sAMAccountName (Active Directory)")
	f.StringVar(&c.UserDNTemplate, "ldap-user-dn-template", "", "without a service account: the user's DN, {user} standing for the user name, e.g. uid={user},ou=people,dc=example,dc=org")
	f.StringVar(&c.GroupBaseDN, "ldap-group-base-dn", "", "where groups are searched (subtree)")
	f.StringVar(&c.GroupFilter, "ldap-group-filter", "", "filter for the user's groups; {dn} is the user's DN, {user} the user name, e.g. (&(objectClass=groupOfNames)(member={dn}))")
	f.StringVar(&c.GroupAttribute, "ldap-group-attribute", DefaultGroupAttribute, "attribute holding a group's name")
	f.StringVar(&c.MemberOfAttribute, "ldap-member-of-attribute", "", "instead of --ldap-group-filter: attribute of the user's entry listing group DNs, e.g. memberOf")
	f.DurationVar(&c.Timeout, "ldap-timeout", DefaultTimeout, "most time one login may spend with the directory")
	f.IntVar(&c.MaxConnections, "ldap-max-connections", DefaultMaxConnections, "logins talking to the directory at once")
	f.DurationVar(&c.RefreshInterval, "ldap-refresh-interval", DefaultRefreshInterval, "how often the groups of ldap users holding a session or token are read again (with --ldap-bind-dn; 0: only at login); a user gone from the directory loses their tokens")
}

// Enabled reports whether LDAP logins are configured at all.
func (c *Config) Enabled() bool { return c.URL != "" }

// settings is a validated Config, with its files read.
type settings struct {
	Config
	scheme, addr string
	tls          *tls.Config
	bindPassword string
}

// attribute descriptions (RFC 4512 descr) or numeric OIDs.
var attrRE = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9-]{0,127}|[0-9]+(\.[0-9]+)+)$`)

// validate checks c and reads its files; every problem is reported at once.
func validate(c Config) (*settings, error) {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.UserAttribute == "" {
		c.UserAttribute = DefaultUserAttribute
	}
	if c.GroupAttribute == "" {
		c.GroupAttribute = DefaultGroupAttribute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	s := &settings{Config: c}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	u, err := url.Parse(c.URL)
	switch {
	case c.URL == "":
		bad("--ldap-url is required")
	case err != nil:
		bad("--ldap-url %q: %v", c.URL, err)
	case u.Scheme != "ldap" && u.Scheme != "ldaps":
		bad("--ldap-url %q: the scheme must be ldaps or ldap", c.URL)
	case u.Hostname() == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		bad("--ldap-url %q: give only ldaps://host[:port] or ldap://host[:port]", c.URL)
	default:
		s.scheme = u.Scheme
		port := u.Port()
		if port == "" {
			port = map[string]string{"ldap": "389", "ldaps": "636"}[u.Scheme]
		}
		s.addr = net.JoinHostPort(u.Hostname(), port)
		switch {
		case s.scheme == "ldaps" && c.StartTLS:
			bad("--ldap-start-tls is for ldap:// URLs; ldaps:// is TLS already")
		case s.scheme == "ldap" && !c.StartTLS && !c.AllowInsecure:
			bad("--ldap-url %q without --ldap-start-tls would send passwords in clear text: use ldaps://, --ldap-start-tls, or allow it with --ldap-allow-insecure", c.URL)
		}
		s.tls = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		pool := x509.NewCertPool()
		switch {
		case err != nil:
			bad("--ldap-ca-file: %v", err)
		case !pool.AppendCertsFromPEM(pem):
			bad("--ldap-ca-file %s holds no PEM certificate", c.CAFile)
		case s.tls != nil:
			s.tls.RootCAs = pool
		}
	}

	dn := func(flag, v string) {
		if _, err := goldap.ParseDN(v); err != nil {
			bad("%s %q is not a DN: %v", flag, v, err)
		}
	}
	attr := func(flag, v string) {
		if !attrRE.MatchString(v) {
			bad("%s %q is not an attribute name", flag, v)
		}
	}
	filter := func(flag, v string) {
		// Placeholders are replaced by escaped values, which cannot change a filter's shape.
		f := strings.NewReplacer("{dn}", "x", "{user}", "x").Replace(v)
		if _, err := goldap.CompileFilter(f); err != nil {
			bad("%s %q is not an LDAP filter: %v", flag, v, err)
		}
	}
	attr("--ldap-user-attribute", c.UserAttribute)
	switch {
	case c.BindDN != "" && c.UserDNTemplate != "":
		bad("give --ldap-bind-dn (search for users) or --ldap-user-dn-template (bind directly), not both")
	case c.BindDN != "":
		dn("--ldap-bind-dn", c.BindDN)
		if c.BindPasswordFile == "" {
			bad("--ldap-bind-dn needs --ldap-bind-password-file")
		} else if raw, err := os.ReadFile(c.BindPasswordFile); err != nil {
			bad("--ldap-bind-password-file: %v", err)
		} else if s.bindPassword = strings.TrimRight(string(raw), "\r\n"); s.bindPassword == "" {
			bad("--ldap-bind-password-file %s is empty", c.BindPasswordFile)
		}
		if c.UserBaseDN == "" {
			bad("--ldap-bind-dn needs --ldap-user-base-dn, where users are searched")
		} else {
			dn("--ldap-user-base-dn", c.UserBaseDN)
		}
		if c.UserFilter != "" {
			if strings.Contains(c.UserFilter, "{") {
				bad("--ldap-user-filter takes no placeholder: the user name is matched on --ldap-user-attribute")
			}
			filter("--ldap-user-filter", c.UserFilter)
		}
	case c.UserDNTemplate != "":
		// The name in the DN is the user attribute's value, which the entry then gives back
		// as the directory spells it.
		if strings.Count(c.UserDNTemplate, "{user}") != 1 || !strings.HasPrefix(strings.ToLower(c.UserDNTemplate), strings.ToLower(c.UserAttribute)+"={user},") {
			bad("--ldap-user-dn-template %q must start with %s={user}, (the --ldap-user-attribute) and hold {user} once", c.UserDNTemplate, c.UserAttribute)
		} else {
			dn("--ldap-user-dn-template", strings.Replace(c.UserDNTemplate, "{user}", "x", 1))
		}
		if c.BindPasswordFile != "" || c.UserBaseDN != "" || c.UserFilter != "" {
			bad("--ldap-bind-password-file, --ldap-user-base-dn and --ldap-user-filter are for --ldap-bind-dn, not --ldap-user-dn-template")
		}
	default:
		bad("give --ldap-bind-dn and --ldap-bind-password-file (a service account searches for users), or --ldap-user-dn-template (users bind directly)")
	}

	switch {
	case c.GroupFilter != "" && c.MemberOfAttribute != "":
		bad("give --ldap-group-filter or --ldap-member-of-attribute, not both")
	case c.GroupFilter != "":
		if c.GroupBaseDN == "" {
			bad("--ldap-group-filter needs --ldap-group-base-dn")
		}
		if !strings.Contains(c.GroupFilter, "{dn}") && !strings.Contains(c.GroupFilter, "{user}") {
			bad("--ldap-group-filter %q names neither {dn} nor {user}: it would give every user the same groups", c.GroupFilter)
		}
		filter("--ldap-group-filter", c.GroupFilter)
		attr("--ldap-group-attribute", c.GroupAttribute)
	case c.MemberOfAttribute != "":
		attr("--ldap-member-of-attribute", c.MemberOfAttribute)
	}
	if c.GroupBaseDN != "" {
		dn("--ldap-group-base-dn", c.GroupBaseDN)
	}
	if c.Timeout < 0 || c.Timeout > 5*time.Minute {
		bad("--ldap-timeout %v: give a duration between 0 and 5m", c.Timeout)
	}
	if c.MaxConnections < 0 || c.MaxConnections > 1000 {
		bad("--ldap-max-connections %d: give 1 to 1000", c.MaxConnections)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("LDAP configuration: %w", errors.Join(errs...))
	}
	return s, nil
}
