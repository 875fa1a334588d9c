package ldap

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/ldap/ldaptest"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

const (
	peopleBase = "ou=people," + ldaptest.Suffix
	groupBase  = "ou=groups," + ldaptest.Suffix
	svcDN      = "cn=flotilla,ou=services," + ldaptest.Suffix
	svcPass    = "service-account-password"
	alicePass  = "alice-correct-horse"
	bobPass    = "bob-battery-staple"
)

// directory starts slapd holding: alice (groups admins, devs), bob (devs, and ops through
// memberUid), users literally named "st*r(x)" and "smith, john", a name two entries share,
// and the service account.
func directory(t *testing.T) *ldaptest.Server {
	t.Helper()
	s := ldaptest.Start(t)
	alice := s.AddUser(t, "alice", alicePass)
	bob := s.AddUser(t, "bob", bobPass)
	star := s.AddUser(t, "st*r(x)", "star-password-1")
	s.AddUser(t, "smith, john", "smith-password-1")
	s.AddUser(t, "twin", "twin-password-1")
	s.Add(t, "uid=twin,"+ldaptest.Suffix, map[string][]string{
		"objectClass": {"inetOrgPerson"}, "uid": {"twin"}, "cn": {"twin"}, "sn": {"twin"}, "userPassword": {"twin-password-1"}})
	s.Add(t, "ou=services,"+ldaptest.Suffix, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"services"}})
	s.Add(t, svcDN, map[string][]string{
		"objectClass": {"organizationalRole", "simpleSecurityObject"}, "cn": {"flotilla"}, "userPassword": {svcPass}})
	s.AddGroup(t, "admins", []string{alice}, nil)
	s.AddGroup(t, "devs", []string{alice, bob, star}, nil)
	s.AddGroup(t, "ops", []string{svcDN}, []string{"bob"})
	return s
}

func passwordFile(t *testing.T, pw string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "bind-password")
	if err := os.WriteFile(f, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// searchConfig is the service-account mode over StartTLS, groups by member DN.
func searchConfig(t *testing.T, s *ldaptest.Server) Config {
	return Config{
		URL: s.URL, StartTLS: true, CAFile: s.CAFile,
		BindDN: svcDN, BindPasswordFile: passwordFile(t, svcPass),
		UserBaseDN: ldaptest.Suffix, UserFilter: "(objectClass=inetOrgPerson)", UserAttribute: "uid",
		GroupBaseDN: groupBase, GroupFilter: "(&(objectClass=groupOfNames)(member={dn}))", GroupAttribute: "cn",
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
}

func newProvider(t *testing.T, cfg Config) *Provider {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func login(t *testing.T, p *Provider, user, pw string) auth.Identity {
	t.Helper()
	id, err := p.Authenticate(context.Background(), user, pw)
	if err != nil {
		t.Fatalf("login %q: %v", user, err)
	}
	return id
}

// refused checks that a login is refused with exactly the answer every wrong name or
// password gets.
func refused(t *testing.T, p *Provider, user, pw string) {
	t.Helper()
	id, err := p.Authenticate(context.Background(), user, pw)
	if !errors.Is(err, auth.ErrUnauthenticated) || err.Error() != errInvalid.Error() {
		t.Fatalf("login %q: got %+v, %v; want %v", user, id, err, errInvalid)
	}
}

var requestRE = regexp.MustCompile(` op=\d+ (BIND|SRCH|EXT) `)

// requests is the kinds of request slapd logged during a refused login.
func requests(t *testing.T, s *ldaptest.Server, p *Provider, user, pw string) []string {
	t.Helper()
	before := len(s.Log())
	refused(t, p, user, pw)
	var kinds []string
	for _, m := range requestRE.FindAllStringSubmatch(s.Log()[before:], -1) {
		kinds = append(kinds, m[1])
	}
	return kinds
}

func sameGroups(t *testing.T, id auth.Identity, want ...string) {
	t.Helper()
	got := slices.Sorted(slices.Values(id.Groups))
	if !slices.Equal(got, want) {
		t.Fatalf("%s's groups: got %q, want %q", id.User, got, want)
	}
}

func TestLDAP(t *testing.T) {
	s := directory(t)

	t.Run("search mode", func(t *testing.T) {
		p := newProvider(t, searchConfig(t, s))
		if p.Name() != api.ProviderLDAP {
			t.Fatalf("Name() = %q", p.Name())
		}
		id := login(t, p, "alice", alicePass)
		if id.User != "alice" || id.Admin {
			t.Fatalf("got %+v", id)
		}
		sameGroups(t, id, "admins", "devs")
		sameGroups(t, login(t, p, "bob", bobPass), "devs")
		// Matching is the directory's (case-insensitive); the name is the directory's.
		if id := login(t, p, "ALICE", alicePass); id.User != "alice" {
			t.Fatalf("ALICE logged in as %q, want alice", id.User)
		}
		// A name with filter metacharacters is matched literally.
		sameGroups(t, login(t, p, "st*r(x)", "star-password-1"), "devs")

		refused(t, p, "alice", "wrong-password")
		refused(t, p, "nobody", alicePass)
		refused(t, p, "bob", alicePass)
		refused(t, p, "alice", "")
		refused(t, p, "", alicePass)
		refused(t, p, "alice", strings.Repeat("x", 2000))
		// Two entries share the name: neither may log in.
		refused(t, p, "twin", "twin-password-1")

		// The directory sees the same exchanges for an unknown name as for a wrong password,
		// so that their time does not tell one from the other.
		wrong, unknown := requests(t, s, p, "alice", "wrong-password"), requests(t, s, p, "nobody", "wrong-password")
		if !slices.Equal(wrong, unknown) || len(wrong) < 3 {
			t.Fatalf("a wrong password makes the requests %q, an unknown name %q", wrong, unknown)
		}
	})

	t.Run("filter injection", func(t *testing.T) {
		for _, cfg := range []Config{searchConfig(t, s), directConfig(s)} {
			p := newProvider(t, cfg)
			for _, name := range []string{
				"*", "a*", "al*", "*e", "alice*", "alice)(uid=*", "*)(uid=*", "alice)(|(uid=*",
				"alice)(objectClass=*", "*)(objectClass=*))(|(uid=*", "st*", "alice\x00", "\x00",
				"alice\\2a", `alice\`, "alice,ou=people", "uid=alice,ou=people,dc=example,dc=org",
				"alice+cn=alice", " alice", "(uid=alice)", "bob)(|(cn=*",
			} {
				for _, pw := range []string{alicePass, bobPass, "star-password-1", "x"} {
					refused(t, p, name, pw)
				}
			}
		}
	})

	t.Run("memberUid groups", func(t *testing.T) {
		cfg := searchConfig(t, s)
		cfg.GroupFilter = "(memberUid={user})"
		p := newProvider(t, cfg)
		sameGroups(t, login(t, p, "bob", bobPass), "ops")
		sameGroups(t, login(t, p, "alice", alicePass))
	})

	t.Run("memberOf groups", func(t *testing.T) {
		cfg := searchConfig(t, s)
		cfg.GroupFilter, cfg.MemberOfAttribute = "", "memberOf"
		p := newProvider(t, cfg)
		id := login(t, p, "alice", alicePass)
		if len(id.Groups) == 0 {
			t.Skip("this slapd keeps no memberOf (no memberof overlay)")
		}
		sameGroups(t, id, "admins", "devs")
		sameGroups(t, login(t, p, "bob", bobPass), "devs")
		cfg.GroupBaseDN = "ou=elsewhere," + ldaptest.Suffix
		sameGroups(t, login(t, newProvider(t, cfg), "alice", alicePass))
	})

	t.Run("direct bind mode", func(t *testing.T) {
		p := newProvider(t, directConfig(s))
		id := login(t, p, "alice", alicePass)
		if id.User != "alice" {
			t.Fatalf("got %+v", id)
		}
		sameGroups(t, id, "admins", "devs")
		if id := login(t, p, "Alice", alicePass); id.User != "alice" {
			t.Fatalf("Alice logged in as %q", id.User)
		}
		sameGroups(t, login(t, p, "st*r(x)", "star-password-1"), "devs")
		// DN metacharacters are escaped into the template, not parsed as DN syntax.
		if id := login(t, p, "smith, john", "smith-password-1"); id.User != "smith, john" {
			t.Fatalf("got %+v", id)
		}
		refused(t, p, "alice", "wrong-password")
		refused(t, p, "nobody", alicePass)
		refused(t, p, "alice", "")
	})

	t.Run("ldaps", func(t *testing.T) {
		cfg := searchConfig(t, s)
		cfg.URL, cfg.StartTLS = s.LDAPSURL, false
		sameGroups(t, login(t, newProvider(t, cfg), "alice", alicePass), "admins", "devs")
	})

	t.Run("plain ldap when allowed", func(t *testing.T) {
		cfg := searchConfig(t, s)
		cfg.StartTLS, cfg.AllowInsecure, cfg.CAFile = false, true, ""
		sameGroups(t, login(t, newProvider(t, cfg), "alice", alicePass), "admins", "devs")
	})

	// Failures of the directory or of the server's configuration are the server's errors,
	// never "wrong password".
	serverError := func(t *testing.T, p *Provider, want string) {
		t.Helper()
		_, err := p.Authenticate(context.Background(), "alice", alicePass)
		if err == nil || errors.Is(err, auth.ErrUnauthenticated) || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v, want a server error containing %q", err, want)
		}
		if strings.Contains(err.Error(), alicePass) || strings.Contains(err.Error(), svcPass) {
			t.Fatalf("the error shows a password: %v", err)
		}
	}

	t.Run("untrusted certificate", func(t *testing.T) {
		cfg := searchConfig(t, s)
		cfg.CAFile = "" // the system's roots do not know the test CA
		serverError(t, newProvider(t, cfg), "StartTLS")
		cfg.URL, cfg.StartTLS = s.LDAPSURL, false
		serverError(t, newProvider(t, cfg), "TLS")
	})

	t.Run("service account refused", func(t *testing.T) {
		cfg := searchConfig(t, s)
		cfg.BindPasswordFile = passwordFile(t, "not-the-password")
		serverError(t, newProvider(t, cfg), "service account")
	})

	t.Run("directory down", func(t *testing.T) {
		p := newProvider(t, searchConfig(t, s))
		login(t, p, "alice", alicePass)
		s.Stop()
		serverError(t, p, "connecting to the directory")
		// A refused password is still refused without asking anyone.
		refused(t, p, "alice", "")
	})
}

func directConfig(s *ldaptest.Server) Config {
	return Config{
		URL: s.URL, StartTLS: true, CAFile: s.CAFile,
		UserDNTemplate: "uid={user}," + peopleBase,
		GroupBaseDN:    groupBase, GroupFilter: "(member={dn})",
	}
}

// A directory that accepts connections and never answers: every step is bounded.
func TestSilentDirectory(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	url := "ldap://" + l.Addr().String()
	for _, cfg := range []Config{
		{URL: url, StartTLS: true, UserDNTemplate: "uid={user},dc=x"},
		{URL: url, AllowInsecure: true, UserDNTemplate: "uid={user},dc=x"},
		{URL: strings.Replace(url, "ldap:", "ldaps:", 1), UserDNTemplate: "uid={user},dc=x"},
	} {
		cfg.Timeout = 200 * time.Millisecond
		p := newProvider(t, cfg)
		_, err := p.Authenticate(context.Background(), "alice", alicePass)
		if err == nil || errors.Is(err, auth.ErrUnauthenticated) {
			t.Fatalf("%+v: got %v, want a timeout", cfg, err)
		}
		t.Logf("%s: %v", cfg.URL, err)
	}
}

// The empty password is refused before anything is sent: the provider here points at a
// port nobody listens on, and still answers "invalid user name or password".
func TestEmptyPasswordNeverReachesTheDirectory(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "ldap://" + l.Addr().String()
	l.Close()
	p := newProvider(t, Config{URL: url, AllowInsecure: true, UserDNTemplate: "uid={user},dc=x"})
	refused(t, p, "alice", "")
	_, err = p.Authenticate(context.Background(), "alice", "some-password")
	if err == nil || errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("with a password: got %v, want a connection error", err)
	}
}

func TestConfigValidation(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	notPEM := filepath.Join(dir, "ca")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	ok := Config{URL: "ldaps://dc.example.org", BindDN: "cn=svc,dc=example,dc=org", BindPasswordFile: pw, UserBaseDN: "dc=example,dc=org"}
	if _, err := New(ok); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	ad := ok
	ad.UserAttribute, ad.UserFilter = "sAMAccountName", "(&(objectCategory=person)(objectClass=user))"
	ad.GroupBaseDN, ad.GroupFilter = "dc=example,dc=org", "(member:1.2.840.113556.1.4.1941:={dn})"
	if _, err := New(ad); err != nil {
		t.Fatalf("Active Directory's config refused: %v", err)
	}
	for _, tc := range []struct {
		change func(*Config)
		want   string
	}{
		{func(c *Config) { c.URL = "" }, "--ldap-url is required"},
		{func(c *Config) { c.URL = "http://dc" }, "scheme"},
		{func(c *Config) { c.URL = "ldaps://dc/dc=example?uid" }, "give only"},
		{func(c *Config) { c.URL = "ldaps://user:pw@dc" }, "give only"},
		{func(c *Config) { c.URL = "ldap://dc" }, "clear text"},
		{func(c *Config) { c.StartTLS = true }, "ldaps:// is TLS already"},
		{func(c *Config) { c.CAFile = notPEM }, "no PEM certificate"},
		{func(c *Config) { c.CAFile = filepath.Join(dir, "missing") }, "--ldap-ca-file"},
		{func(c *Config) { c.BindPasswordFile = "" }, "needs --ldap-bind-password-file"},
		{func(c *Config) { c.BindPasswordFile = empty }, "is empty"},
		{func(c *Config) { c.BindDN = "not a dn" }, "not a DN"},
		{func(c *Config) { c.UserBaseDN = "" }, "needs --ldap-user-base-dn"},
		{func(c *Config) { c.UserFilter = "objectClass=person" }, "not an LDAP filter"},
		{func(c *Config) { c.UserFilter = "(uid={user})" }, "no placeholder"},
		{func(c *Config) { c.UserAttribute = "uid)(x" }, "not an attribute name"},
		{func(c *Config) { c.BindDN, c.BindPasswordFile, c.UserBaseDN = "", "", "" }, "give --ldap-bind-dn"},
		{func(c *Config) { c.UserDNTemplate = "uid={user},dc=x" }, "not both"},
		{func(c *Config) {
			c.BindDN, c.BindPasswordFile, c.UserBaseDN, c.UserDNTemplate = "", "", "", "uid=x,dc=x"
		}, "must start with uid={user},"},
		{func(c *Config) {
			c.BindDN, c.BindPasswordFile, c.UserBaseDN, c.UserDNTemplate = "", "", "", "cn={user},dc=x"
		}, "must start with uid={user},"},
		{func(c *Config) {
			c.BindDN, c.BindPasswordFile, c.UserBaseDN, c.UserDNTemplate = "", "", "", "uid={user},ou={user},dc=x"
		}, "hold {user} once"},
		{func(c *Config) { c.GroupFilter = "(member={dn})" }, "needs --ldap-group-base-dn"},
		{func(c *Config) { c.GroupFilter, c.GroupBaseDN = "(objectClass=group)", "dc=x" }, "neither {dn} nor {user}"},
		{func(c *Config) { c.GroupFilter, c.GroupBaseDN = "(member={dn}", "dc=x" }, "not an LDAP filter"},
		{func(c *Config) {
			c.GroupFilter, c.GroupBaseDN, c.MemberOfAttribute = "(member={dn})", "dc=x", "memberOf"
		}, "not both"},
		{func(c *Config) { c.Timeout = time.Hour }, "--ldap-timeout"},
		{func(c *Config) { c.MaxConnections = -1 }, "--ldap-max-connections"},
	} {
		c := ok
		tc.change(&c)
		_, err := New(c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error containing %q", c, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("the error shows the bind password: %v", err)
		}
	}
}

// Logins beyond MaxConnections wait for a connection, within their own deadline.
func TestConnectionBound(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	p := newProvider(t, Config{URL: "ldap://" + l.Addr().String(), AllowInsecure: true,
		UserDNTemplate: "uid={user},dc=x", MaxConnections: 1, Timeout: time.Minute})
	ctx1, cancel1 := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := p.Authenticate(ctx1, "alice", alicePass); first <- err }()
	c := <-accepted // the first login holds the only connection, waiting for an answer
	defer c.Close()

	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := p.Authenticate(ctx2, "bob", bobPass); err == nil || !strings.Contains(err.Error(), "waiting for one of 1 connections") {
		t.Fatalf("second login: got %v, want it to wait for the connection", err)
	}
	select {
	case c := <-accepted:
		c.Close()
		t.Fatal("a second connection was opened")
	default:
	}
	cancel1()
	if err := <-first; err == nil || errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("first login, cancelled: got %v", err)
	}
}

// Sessions of LDAP users follow the directory: with a real slapd, alice taken out of a group
// loses it at the next refresh, bob deleted from the directory loses his session, both
// without logging in again.
func TestRefreshFollowsTheDirectory(t *testing.T) {
	s := directory(t)
	p := newProvider(t, searchConfig(t, s))
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = slog.New(slog.DiscardHandler)
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a := auth.NewAuthenticator(st)
	a.ConfigureLogin(auth.LoginConfig{Providers: []auth.PasswordProvider{p}, Logger: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	session := func(user, pw string) string {
		resp, err := a.Login(ctx, api.LoginRequest{Provider: api.ProviderLDAP, Username: user, Password: pw}, "127.0.0.1")
		if err != nil {
			t.Fatalf("login %s: %v", user, err)
		}
		return resp.Token
	}
	alice, bob := session("alice", alicePass), session("bob", bobPass)

	if id, err := p.Lookup(ctx, "alice"); err != nil {
		t.Fatal(err)
	} else {
		sameGroups(t, id, "admins", "devs")
	}
	if _, err := p.Lookup(ctx, "nobody"); !errors.Is(err, auth.ErrUserNotFound) {
		t.Errorf("looking up a user the directory lacks: %v, want ErrUserNotFound", err)
	}
	if _, err := p.Lookup(ctx, "twin"); !errors.Is(err, auth.ErrUserNotFound) {
		t.Errorf("looking up a name two entries share: %v, want ErrUserNotFound", err)
	}
	if _, err := newProvider(t, directConfig(s)).Lookup(ctx, "alice"); !errors.Is(err, ErrCannotLookUp) {
		t.Errorf("looking up without a service account: %v", err)
	}

	s.RemoveMember(t, "cn=devs,"+groupBase, "uid=alice,"+peopleBase)
	s.Delete(t, "uid=bob,"+peopleBase)
	res, err := a.RefreshGroupsOnce(ctx, p)
	if err != nil || res != (auth.RefreshResult{Refreshed: 1, Changed: 1, Revoked: 1}) {
		t.Fatalf("refresh: %+v, %v", res, err)
	}
	id, err := a.Authenticate(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	sameGroups(t, *id, "admins")
	if _, err := a.Authenticate(ctx, bob); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("bob's session after he left the directory: %v", err)
	}
}
