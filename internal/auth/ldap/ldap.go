// Package ldap checks password logins against an LDAP directory (OpenLDAP, Active
// Directory): it finds the user's entry, binds as the user with the password, and reads the
// user's groups. It owns the provider's configuration and its server flags.
package ldap

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"unicode/utf8"

	goldap "github.com/go-ldap/ldap/v3"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/users"
)

// Bounds on what a login may send and what the directory may answer.
const (
	maxNameBytes     = 200 // as rbac allows for subject names
	maxPasswordBytes = 1024
	maxGroups        = 1000
)

// errInvalid is every refused login's answer, whatever the reason, so that it never says
// whether the user exists.
var errInvalid = fmt.Errorf("%w: %w", auth.ErrUnauthenticated, users.ErrInvalidCredentials)

// Provider is the ldap PasswordProvider. It opens a connection per login, at most
// MaxConnections at once, and always closes it.
type Provider struct {
	s   *settings
	sem chan struct{}
}

var _ auth.PasswordProvider = (*Provider)(nil)

// New validates cfg, reads its files (CA, bind password) and returns the provider. It does
// not contact the directory.
func New(cfg Config) (*Provider, error) {
	s, err := validate(cfg)
	if err != nil {
		return nil, err
	}
	return &Provider{s: s, sem: make(chan struct{}, s.MaxConnections)}, nil
}

// Name is api.ProviderLDAP.
func (p *Provider) Name() string { return api.ProviderLDAP }

// Authenticate checks username and password with the directory. A wrong name or password,
// or a name the directory cannot tell apart from others, is ErrUnauthenticated; a directory
// that cannot be reached or refuses the service account is another error, for the server's
// log.
func (p *Provider) Authenticate(ctx context.Context, username, password string) (auth.Identity, error) {
	// An empty password would make the bind "unauthenticated" (RFC 4513 5.1.2), which many
	// directories answer with success: it must never reach one.
	if password == "" || len(password) > maxPasswordBytes || !validName(username) {
		return auth.Identity{}, errInvalid
	}
	ctx, cancel := context.WithTimeout(ctx, p.s.Timeout)
	defer cancel()
	conn, release, err := p.connect(ctx)
	if err != nil {
		return auth.Identity{}, err
	}
	defer release()
	id, err := p.login(conn, username, password)
	if err != nil && ctx.Err() != nil && !errors.Is(err, auth.ErrUnauthenticated) {
		err = fmt.Errorf("%w (%w)", err, ctx.Err())
	}
	return id, err
}

// connect takes one of the provider's connection slots and dials the directory; release
// closes the connection and frees the slot. The library waits on some replies without a
// deadline: closing the connection when ctx ends ends those waits.
func (p *Provider) connect(ctx context.Context) (conn *goldap.Conn, release func(), err error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("LDAP: waiting for one of %d connections to the directory: %w", cap(p.sem), ctx.Err())
	}
	conn, err = p.dial(ctx)
	if err != nil {
		<-p.sem
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	return conn, func() {
		stop()
		conn.Close()
		<-p.sem
	}, nil
}

// Lookup reads a user's groups again, as the service account, without the user's password:
// a session made at login keeps the rights of a user whose groups changed, or who left the
// directory, only until the next refresh. A user the search no longer finds (or finds more
// than once) is auth.ErrUserNotFound. Without a service account (UserDNTemplate) nothing can be
// read without the user's password: ErrCannotLookUp.
func (p *Provider) Lookup(ctx context.Context, username string) (auth.Identity, error) {
	if p.s.BindDN == "" {
		return auth.Identity{}, ErrCannotLookUp
	}
	if !validName(username) {
		return auth.Identity{}, auth.ErrUserNotFound
	}
	ctx, cancel := context.WithTimeout(ctx, p.s.Timeout)
	defer cancel()
	conn, release, err := p.connect(ctx)
	if err != nil {
		return auth.Identity{}, err
	}
	defer release()
	if err := conn.Bind(p.s.BindDN, p.s.bindPassword); err != nil {
		return auth.Identity{}, fmt.Errorf("LDAP: binding as the service account %s: %w", p.s.BindDN, err)
	}
	filter := fmt.Sprintf("(%s=%s)", p.s.UserAttribute, goldap.EscapeFilter(username))
	if p.s.UserFilter != "" {
		filter = "(&" + p.s.UserFilter + filter + ")"
	}
	res, err := p.search(conn, p.s.UserBaseDN, goldap.ScopeWholeSubtree, filter, 2, p.userAttributes())
	if goldap.IsErrorWithCode(err, goldap.LDAPResultSizeLimitExceeded) || (err == nil && len(res.Entries) != 1) {
		return auth.Identity{}, auth.ErrUserNotFound
	}
	if err != nil {
		return auth.Identity{}, fmt.Errorf("LDAP: searching for the user under %s: %w", p.s.UserBaseDN, err)
	}
	entry := res.Entries[0]
	// The name must still be the one the session was made for (the attribute's value, as
	// a login spells it).
	if canonicalName(entry, p.s.UserAttribute, username) != username {
		return auth.Identity{}, auth.ErrUserNotFound
	}
	id := auth.Identity{User: username}
	if id.Groups, err = p.groups(conn, entry, username); err != nil {
		return auth.Identity{}, err
	}
	return id, nil
}

// ErrCannotLookUp: the provider has no service account to read users with.
var ErrCannotLookUp = errors.New("LDAP: users cannot be looked up without a service account (--ldap-bind-dn)")

func (p *Provider) login(conn *goldap.Conn, username, password string) (auth.Identity, error) {
	var entry *goldap.Entry
	if p.s.BindDN != "" {
		if err := conn.Bind(p.s.BindDN, p.s.bindPassword); err != nil {
			return auth.Identity{}, fmt.Errorf("LDAP: binding as the service account %s: %w", p.s.BindDN, err)
		}
		var err error
		if entry, err = p.findUser(conn, username, password); err != nil {
			return auth.Identity{}, err
		}
	} else {
		entry = &goldap.Entry{DN: strings.Replace(p.s.UserDNTemplate, "{user}", goldap.EscapeDN(username), 1)}
	}
	if err := conn.Bind(entry.DN, password); err != nil {
		if goldap.IsErrorWithCode(err, goldap.LDAPResultInvalidCredentials) {
			return auth.Identity{}, errInvalid
		}
		return auth.Identity{}, fmt.Errorf("LDAP: binding as the user: %w", err)
	}
	if p.s.BindDN == "" {
		// Read the entry as the user: its name as the directory spells it, and memberOf.
		res, err := p.search(conn, entry.DN, goldap.ScopeBaseObject, "(objectClass=*)", 1, p.userAttributes())
		if err != nil {
			return auth.Identity{}, fmt.Errorf("LDAP: reading the user's entry %s: %w", entry.DN, err)
		}
		if len(res.Entries) != 1 {
			return auth.Identity{}, fmt.Errorf("LDAP: the user's entry %s cannot be read after binding as the user", entry.DN)
		}
		entry = res.Entries[0]
	}
	id := auth.Identity{User: canonicalName(entry, p.s.UserAttribute, username)}
	if !validName(id.User) {
		return auth.Identity{}, fmt.Errorf("LDAP: the entry %s has %s %q, not usable as a user name", entry.DN, p.s.UserAttribute, id.User)
	}
	if p.s.BindDN != "" && p.s.MemberOfAttribute == "" && p.s.GroupFilter != "" {
		// Groups are read as the service account: users may not see them.
		if err := conn.Bind(p.s.BindDN, p.s.bindPassword); err != nil {
			return auth.Identity{}, fmt.Errorf("LDAP: binding as the service account %s: %w", p.s.BindDN, err)
		}
	}
	var err error
	if id.Groups, err = p.groups(conn, entry, id.User); err != nil {
		return auth.Identity{}, err
	}
	return id, nil
}

// groups reads the groups of the user whose entry is given, as whoever conn is bound as.
func (p *Provider) groups(conn *goldap.Conn, entry *goldap.Entry, user string) ([]string, error) {
	switch {
	case p.s.MemberOfAttribute != "":
		return p.memberOf(entry)
	case p.s.GroupFilter != "":
		return p.searchGroups(conn, entry.DN, user)
	}
	return nil, nil
}

// findUser searches for the one entry of username. None, or more than one, is a refused
// login; more than one is also logged, as the directory's configuration is at fault.
func (p *Provider) findUser(conn *goldap.Conn, username, password string) (*goldap.Entry, error) {
	// EscapeFilter turns *, (, ), \ and NUL into escapes: a name is always matched as a
	// literal value, never as a pattern or part of the filter.
	filter := fmt.Sprintf("(%s=%s)", p.s.UserAttribute, goldap.EscapeFilter(username))
	if p.s.UserFilter != "" {
		filter = "(&" + p.s.UserFilter + filter + ")"
	}
	res, err := p.search(conn, p.s.UserBaseDN, goldap.ScopeWholeSubtree, filter, 2, p.userAttributes())
	if goldap.IsErrorWithCode(err, goldap.LDAPResultSizeLimitExceeded) || (err == nil && len(res.Entries) > 1) {
		p.s.Logger.Warn("LDAP: a user name matches several entries; refusing the login", "user", username, "filter", filter)
		return nil, errInvalid
	}
	if err != nil {
		return nil, fmt.Errorf("LDAP: searching for the user under %s: %w", p.s.UserBaseDN, err)
	}
	if len(res.Entries) == 0 || res.Entries[0].DN == "" {
		// A bind bound to fail, its answer ignored: an unknown name costs the exchanges a
		// wrong password does, so that the time taken does not tell which names exist.
		conn.Bind("cn=flotilla-no-such-user,"+p.s.UserBaseDN, password)
		return nil, errInvalid
	}
	return res.Entries[0], nil
}

func (p *Provider) userAttributes() []string {
	a := []string{p.s.UserAttribute}
	if p.s.MemberOfAttribute != "" {
		a = append(a, p.s.MemberOfAttribute)
	}
	return a
}

// canonicalName is the user's name as the directory holds it (matching is usually
// case-insensitive, and one person must be one Flotilla user), or typed when the entry
// does not show it.
func canonicalName(e *goldap.Entry, attr, typed string) string {
	vals := e.GetEqualFoldAttributeValues(attr)
	for _, v := range vals {
		if strings.EqualFold(v, typed) {
			return v
		}
	}
	if len(vals) == 1 {
		return vals[0]
	}
	return typed
}

func (p *Provider) searchGroups(conn *goldap.Conn, userDN, user string) ([]string, error) {
	filter := strings.NewReplacer("{dn}", goldap.EscapeFilter(userDN), "{user}", goldap.EscapeFilter(user)).Replace(p.s.GroupFilter)
	res, err := p.search(conn, p.s.GroupBaseDN, goldap.ScopeWholeSubtree, filter, maxGroups, []string{p.s.GroupAttribute})
	if goldap.IsErrorWithCode(err, goldap.LDAPResultSizeLimitExceeded) {
		return nil, fmt.Errorf("LDAP: the user %s is in more than %d groups under %s", user, maxGroups, p.s.GroupBaseDN)
	}
	if err != nil {
		return nil, fmt.Errorf("LDAP: searching for the user's groups under %s: %w", p.s.GroupBaseDN, err)
	}
	var groups []string
	for _, e := range res.Entries {
		groups = p.addGroup(groups, e.GetEqualFoldAttributeValue(p.s.GroupAttribute), e.DN)
	}
	return groups, nil
}

func (p *Provider) memberOf(e *goldap.Entry) ([]string, error) {
	var base *goldap.DN
	if p.s.GroupBaseDN != "" {
		base, _ = goldap.ParseDN(p.s.GroupBaseDN) // validated
	}
	vals := e.GetEqualFoldAttributeValues(p.s.MemberOfAttribute)
	if len(vals) > maxGroups {
		return nil, fmt.Errorf("LDAP: the user %s is in more than %d groups", e.DN, maxGroups)
	}
	var groups []string
	for _, v := range vals {
		dn, err := goldap.ParseDN(v)
		if err != nil || len(dn.RDNs) == 0 || len(dn.RDNs[0].Attributes) == 0 {
			p.s.Logger.Warn("LDAP: ignoring a group that is not a DN", "user", e.DN, "attribute", p.s.MemberOfAttribute, "value", v)
			continue
		}
		if base != nil && !base.AncestorOfFold(dn) {
			continue
		}
		groups = p.addGroup(groups, dn.RDNs[0].Attributes[0].Value, v)
	}
	return groups, nil
}

// addGroup adds a group name the way bindings can name it, skipping (and logging) one that
// cannot be.
func (p *Provider) addGroup(groups []string, name, dn string) []string {
	if !validName(name) {
		p.s.Logger.Warn("LDAP: ignoring a group whose name cannot be a group name", "group", dn, "name", name)
		return groups
	}
	return append(groups, name)
}

func (p *Provider) search(conn *goldap.Conn, base string, scope int, filter string, limit int, attrs []string) (*goldap.SearchResult, error) {
	return conn.Search(&goldap.SearchRequest{
		BaseDN: base, Scope: scope, DerefAliases: goldap.NeverDerefAliases,
		SizeLimit: limit, EnforceSizeLimit: true,
		TimeLimit: int(math.Ceil(p.s.Timeout.Seconds())),
		Filter:    filter, Attributes: attrs,
	})
}

// dial connects, with TLS from the start (ldaps) or after StartTLS, under ctx's deadline.
func (p *Provider) dial(ctx context.Context) (*goldap.Conn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", p.s.addr)
	if err != nil {
		return nil, fmt.Errorf("LDAP: connecting to the directory %s: %w", p.s.addr, err)
	}
	// A backstop under the library's own per-request timeout, which some waits lack.
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	isTLS := p.s.scheme == "ldaps"
	if isTLS {
		tc := tls.Client(raw, p.s.tls.Clone())
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("LDAP: TLS with the directory %s: %w", p.s.addr, err)
		}
		raw = tc
	}
	conn := goldap.NewConn(raw, isTLS)
	conn.Start()
	conn.SetTimeout(p.s.Timeout)
	if p.s.StartTLS {
		if err := conn.StartTLS(p.s.tls.Clone()); err != nil {
			conn.Close()
			return nil, fmt.Errorf("LDAP: StartTLS with the directory %s: %w", p.s.addr, err)
		}
	}
	return conn, nil
}

// validName is what may be a Flotilla user or group name from a provider: bounded, UTF-8,
// printable, without the leading or trailing spaces directories ignore when matching (so
// that " alice" is not a second spelling of alice).
func validName(s string) bool {
	return s != "" && len(s) <= maxNameBytes && utf8.ValidString(s) && strings.TrimSpace(s) == s &&
		!strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}
