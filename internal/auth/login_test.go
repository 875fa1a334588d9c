package auth

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/auth/users"
	"flotilla.dev/internal/store"
)

const adminTok = "flt_test-admin-token-0123456789"

// fastHasher keeps the tests' hashing cheap; the parameters are argon2id's all the same.
func fastHasher() *users.Hasher {
	return users.NewHasher(users.Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}, 2)
}

// loginServer is the login, password and token API over a SQLite store, served on 127.0.0.1.
type loginServer struct {
	t     *testing.T
	a     *Authenticator
	st    store.Store
	url   string
	clock *clock
	admin *client.Client
}

// fakeLDAP is a PasswordProvider for RecordLogin's logic: it knows users, passwords and groups.
type fakeLDAP struct {
	pw     map[string]string
	groups map[string][]string
	down   bool
	broken map[string]bool // users whose lookup fails
}

func (f *fakeLDAP) Name() string { return api.ProviderLDAP }

// Lookup is GroupSource's: the user's groups as they are now, without the password.
func (f *fakeLDAP) Lookup(ctx context.Context, user string) (Identity, error) {
	if f.down || f.broken[user] {
		return Identity{}, errors.New("directory unreachable")
	}
	if _, ok := f.pw[user]; !ok {
		return Identity{}, ErrUserNotFound
	}
	return Identity{User: user, Groups: f.groups[user]}, nil
}
func (f *fakeLDAP) Authenticate(ctx context.Context, user, pw string) (Identity, error) {
	if p, ok := f.pw[user]; !ok || p != pw {
		return Identity{}, ErrUnauthenticated
	}
	return Identity{User: user, Groups: f.groups[user]}, nil
}

func newLoginServer(t *testing.T, cfg LoginConfig) *loginServer {
	t.Helper()
	st := openStore(t)
	a := NewAuthenticator(st)
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	a.now = c.now
	if cfg.Hasher == nil {
		cfg.Hasher = fastHasher()
	}
	if cfg.Limiter == nil {
		// Generous, on the test's clock: only the rate limit test runs into it.
		cfg.Limiter = users.NewLimiter(users.LimiterConfig{UserBurst: 100, UserEvery: time.Minute, SourceBurst: 1000, SourceEvery: time.Second, MaxKeys: 100, Now: c.now})
	}
	cfg.Logger = quiet
	a.ConfigureLogin(cfg)
	if _, err := a.Bootstrap(context.Background(), adminTok); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	a.RegisterHandlers(mux)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	s := &loginServer{t: t, a: a, st: st, url: ts.URL, clock: c}
	s.admin = s.client(adminTok)
	return s
}

func (s *loginServer) client(token string) *client.Client {
	c, err := client.New(client.Config{Server: s.url, Token: token})
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// addUser stores a User object as the API would.
func (s *loginServer) addUser(name string, spec api.UserSpec) {
	s.t.Helper()
	raw, _ := json.Marshal(spec)
	obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindUser}, Metadata: api.ObjectMeta{Name: name}, Spec: raw}
	if err := s.a.UserHooks().BeforeCreate(context.Background(), obj, false); err != nil {
		s.t.Fatal(err)
	}
	out, err := s.st.Create(context.Background(), obj)
	if err != nil {
		s.t.Fatal(err)
	}
	s.a.UserHooks().AfterCreate(context.Background(), out)
}

// setDisabled changes a User as the API would: hooks first, then the store.
func (s *loginServer) setDisabled(name string, disabled bool) {
	s.t.Helper()
	ctx := context.Background()
	old, err := s.st.Get(ctx, userKey(name))
	if err != nil {
		s.t.Fatal(err)
	}
	obj := old.DeepCopy()
	var spec api.UserSpec
	json.Unmarshal(obj.Spec, &spec)
	spec.Disabled = disabled
	obj.Spec, _ = json.Marshal(spec)
	if err := s.a.UserHooks().BeforeUpdate(ctx, old, obj, false); err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.st.Update(ctx, obj); err != nil {
		s.t.Fatal(err)
	}
}

func (s *loginServer) deleteUser(name string) {
	s.t.Helper()
	ctx := context.Background()
	obj, err := s.st.Delete(ctx, userKey(name), "")
	if err != nil {
		s.t.Fatal(err)
	}
	s.a.UserHooks().AfterDelete(ctx, obj)
}

func (s *loginServer) login(user, pw string) (*api.LoginResponse, error) {
	return s.client("").Login(context.Background(), api.LoginRequest{Username: user, Password: pw})
}

func (s *loginServer) mustLogin(user, pw string) string {
	s.t.Helper()
	resp, err := s.login(user, pw)
	if err != nil {
		s.t.Fatalf("login %s: %v", user, err)
	}
	return resp.Token
}

// works reports whether token is accepted.
func (s *loginServer) works(token string) bool {
	s.t.Helper()
	_, err := s.client(token).WhoAmI(context.Background())
	if err != nil && client.Code(err) != http.StatusUnauthorized {
		s.t.Fatalf("whoami: %v", err)
	}
	return err == nil
}

const alicePW = "correct horse battery staple"

func TestLocalLogin(t *testing.T) {
	s := newLoginServer(t, LoginConfig{SessionTTL: 8 * time.Hour})
	ctx := context.Background()
	s.addUser("alice", api.UserSpec{DisplayName: "Alice"})
	if err := s.admin.SetPassword(ctx, "alice", api.SetPasswordRequest{Password: alicePW}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.login("alice", alicePW)
	if err != nil {
		t.Fatal(err)
	}
	if resp.User != "alice" || !resp.Expires.Equal(s.clock.t.Add(8*time.Hour)) || !strings.HasPrefix(resp.Token, "fls_") {
		t.Errorf("login answer: %+v", resp)
	}
	me, err := s.client(resp.Token).WhoAmI(ctx)
	if err != nil || me.User != "alice" || me.Admin {
		t.Errorf("whoami with the session: %+v, %v", me, err)
	}
	// The password is stored apart from the User object, as an argon2id hash only.
	res, _ := s.st.List(ctx, store.ListOptions{})
	for _, raw := range res.Items {
		if strings.Contains(string(raw), alicePW) {
			t.Errorf("a stored object holds the password: %s", raw)
		}
	}
	u, _ := s.st.Get(ctx, userKey("alice"))
	if raw, _ := json.Marshal(u); strings.Contains(string(raw), "argon2id") {
		t.Errorf("the User object holds the hash: %s", raw)
	}
	if h, err := s.a.passwordHash(ctx, "alice"); err != nil || !strings.HasPrefix(h, "$argon2id$") {
		t.Errorf("stored hash %q, %v", h, err)
	}
	// The session expires with its TTL.
	s.clock.t = s.clock.t.Add(8*time.Hour + time.Second)
	if s.works(resp.Token) {
		t.Error("the session works after its TTL")
	}
	// The bootstrap admin token, with no User object, works throughout.
	if !s.works(adminTok) {
		t.Error("the admin token stopped working")
	}
	// The expired session is deleted by the sweep, the live tokens are kept.
	live := s.mustLogin("alice", alicePW)
	before, _ := s.a.ListTokens(ctx)
	if n, err := s.a.sweepExpired(ctx); err != nil || n != 1 {
		t.Errorf("sweep deleted %d, %v; want the 1 expired session", n, err)
	}
	after, _ := s.a.ListTokens(ctx)
	if len(after) != len(before)-1 || !s.works(live) || !s.works(adminTok) {
		t.Errorf("tokens %d → %d after the sweep; the live session works: %v", len(before), len(after), s.works(live))
	}
	if _, err := s.st.Get(ctx, tokenKey(Hash(resp.Token))); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the expired session is still stored: %v", err)
	}
}

// Wrong password, unknown user, disabled user, a user without a password, a provider's user:
// one answer, so that it reveals nothing.
func TestLoginFailuresAnswerAlike(t *testing.T) {
	s := newLoginServer(t, LoginConfig{Providers: []PasswordProvider{&fakeLDAP{pw: map[string]string{"lee": "ldap password 1234"}}}})
	ctx := context.Background()
	s.addUser("alice", api.UserSpec{})
	s.addUser("nopass", api.UserSpec{})
	s.addUser("dora", api.UserSpec{})
	s.addUser("lee", api.UserSpec{Provider: api.ProviderLDAP})
	for _, u := range []string{"alice", "dora"} {
		if err := s.admin.SetPassword(ctx, u, api.SetPasswordRequest{Password: alicePW}); err != nil {
			t.Fatal(err)
		}
	}
	s.setDisabled("dora", true)
	var answers []string
	for _, c := range []struct{ user, pw string }{
		{"alice", "wrong password here"}, {"nobody", alicePW}, {"dora", alicePW}, {"nopass", alicePW},
		{"lee", "ldap password 1234"}, {"Not A Name!", alicePW}, {strings.Repeat("a", 300), alicePW},
	} {
		_, err := s.login(c.user, c.pw)
		var st *api.Status
		if !errors.As(err, &st) || st.Code != http.StatusUnauthorized {
			t.Fatalf("login %q: %v, want 401", c.user, err)
		}
		answers = append(answers, st.Message)
	}
	if answers[0] != "invalid user name or password" || len(slices.Compact(slices.Clone(answers))) != 1 {
		t.Errorf("answers differ: %q", answers)
	}
	// The LDAP user logs in through its own provider.
	if _, err := s.client("").Login(ctx, api.LoginRequest{Provider: "ldap", Username: "lee", Password: "ldap password 1234"}); err != nil {
		t.Errorf("ldap login: %v", err)
	}
	_, err := s.client("").Login(ctx, api.LoginRequest{Provider: "kerberos", Username: "lee", Password: "x"})
	if client.Code(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "ldap, local") {
		t.Errorf("unknown provider: %v, want 400 naming the providers", err)
	}
}

func TestLoginRateLimit(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	lim := users.NewLimiter(users.LimiterConfig{UserBurst: 3, UserEvery: time.Minute, SourceBurst: 5, SourceEvery: 10 * time.Minute, MaxKeys: 100, Now: c.now})
	s := newLoginServer(t, LoginConfig{Limiter: lim})
	s.addUser("alice", api.UserSpec{})
	if err := s.admin.SetPassword(context.Background(), "alice", api.SetPasswordRequest{Password: alicePW}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.login("alice", "wrong password here"); client.Code(err) != http.StatusUnauthorized {
			t.Fatalf("a wrong password: %v", err)
		}
	}
	// Even the right password is refused now, saying when to retry.
	body := `{"username":"alice","password":"` + alicePW + `"}`
	resp, err := http.Post(s.url+api.PathLogin, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var st api.Status
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "60" ||
		st.Reason != api.ReasonTooManyRequests || st.Message != "too many login attempts; try again in 1m0s" {
		t.Errorf("4th attempt: %d, Retry-After %q, %+v", resp.StatusCode, resp.Header.Get("Retry-After"), st)
	}
	c.t = c.t.Add(time.Minute)
	if _, err := s.login("alice", alicePW); err != nil {
		t.Errorf("after waiting: %v", err)
	}
	// Per source: the source's 5 attempts are spent (4 above), whatever the user names.
	s.login("bob", "x")
	if _, err := s.login("carol", "whatever password"); client.Code(err) != http.StatusTooManyRequests {
		t.Errorf("after the source's burst: %v, want 429", err)
	}
}

// A disabled user's sessions and API tokens stop at once, though cached; it cannot log in;
// enabled again, it can, but its old tokens are gone for good.
func TestDisabledUserStopsAtOnce(t *testing.T) {
	s := newLoginServer(t, LoginConfig{})
	ctx := context.Background()
	s.addUser("alice", api.UserSpec{})
	s.addUser("bob", api.UserSpec{})
	for _, u := range []string{"alice", "bob"} {
		if err := s.admin.SetPassword(ctx, u, api.SetPasswordRequest{Password: alicePW}); err != nil {
			t.Fatal(err)
		}
	}
	session := s.mustLogin("alice", alicePW)
	tok, err := s.client(session).CreateAPIToken(ctx, api.CreateTokenRequest{Description: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	bobs := s.mustLogin("bob", alicePW)
	for _, tk := range []string{session, tok.Token, bobs} {
		if !s.works(tk) { // and cached now
			t.Fatal("a fresh token does not work")
		}
	}
	s.setDisabled("alice", true)
	if s.works(session) || s.works(tok.Token) {
		t.Error("a disabled user's tokens still work")
	}
	if !s.works(bobs) || !s.works(adminTok) {
		t.Error("other users' tokens stopped working")
	}
	if _, err := s.login("alice", alicePW); client.Code(err) != http.StatusUnauthorized {
		t.Errorf("a disabled user logs in: %v", err)
	}
	if left, _ := s.a.ListUserTokens(ctx, "alice"); len(left) != 0 {
		t.Errorf("a disabled user's tokens are still stored: %+v", left)
	}
	s.setDisabled("alice", false)
	if s.works(session) || s.works(tok.Token) {
		t.Error("tokens of a user disabled once work again")
	}
	if !s.works(s.mustLogin("alice", alicePW)) {
		t.Error("an enabled user's new session does not work")
	}
}

// A store where the User was disabled or deleted without the hooks (another replica, a
// restart): tokens bound to the User are refused at the next check.
func TestUserCheckedWithoutHooks(t *testing.T) {
	s := newLoginServer(t, LoginConfig{})
	ctx := context.Background()
	s.addUser("alice", api.UserSpec{})
	s.admin.SetPassword(ctx, "alice", api.SetPasswordRequest{Password: alicePW})
	session := s.mustLogin("alice", alicePW)
	obj, _ := s.st.Get(ctx, userKey("alice"))
	obj.Spec = json.RawMessage(`{"disabled":true}`)
	if _, err := s.st.Update(ctx, obj); err != nil {
		t.Fatal(err)
	}
	other := NewAuthenticator(s.st) // a replica that never saw the token
	other.now = s.clock.now
	if _, err := other.Authenticate(ctx, session); !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "disabled") {
		t.Errorf("disabled in the store: %v", err)
	}
	obj, _ = s.st.Get(ctx, userKey("alice"))
	obj.Spec = json.RawMessage(`{}`)
	s.st.Update(ctx, obj)
	if _, err := other.Authenticate(ctx, session); err != nil {
		t.Errorf("enabled again: %v", err)
	}
	s.st.Delete(ctx, userKey("alice"), "")
	other = NewAuthenticator(s.st)
	other.now = s.clock.now
	if _, err := other.Authenticate(ctx, session); !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "deleted") {
		t.Errorf("deleted in the store: %v", err)
	}
}

func TestDeletedUserStopsAtOnce(t *testing.T) {
	s := newLoginServer(t, LoginConfig{})
	ctx := context.Background()
	s.addUser("alice", api.UserSpec{})
	s.admin.SetPassword(ctx, "alice", api.SetPasswordRequest{Password: alicePW})
	session := s.mustLogin("alice", alicePW)
	tok, err := s.client(session).CreateAPIToken(ctx, api.CreateTokenRequest{})
	if err != nil || !s.works(tok.Token) || !s.works(session) {
		t.Fatal(err)
	}
	s.deleteUser("alice")
	if s.works(session) || s.works(tok.Token) {
		t.Error("a deleted user's tokens still work")
	}
	if h, _ := s.a.passwordHash(ctx, "alice"); h != "" {
		t.Error("a deleted user's password is still stored")
	}
	// A new user of the same name starts afresh: without the old password or tokens.
	s.addUser("alice", api.UserSpec{})
	if _, err := s.login("alice", alicePW); client.Code(err) != http.StatusUnauthorized {
		t.Errorf("the new alice logs in with the old password: %v", err)
	}
	if s.works(session) {
		t.Error("the old alice's session works for the new one")
	}
	s.admin.SetPassword(ctx, "alice", api.SetPasswordRequest{Password: alicePW})
	if !s.works(s.mustLogin("alice", alicePW)) {
		t.Error("the new alice's session does not work")
	}
}

func TestAPITokensPerUser(t *testing.T) {
	s := newLoginServer(t, LoginConfig{MaxTokenTTL: 24 * time.Hour})
	ctx := context.Background()
	for _, u := range []string{"alice", "bob"} {
		s.addUser(u, api.UserSpec{})
		s.admin.SetPassword(ctx, u, api.SetPasswordRequest{Password: alicePW})
	}
	alice, bob := s.client(s.mustLogin("alice", alicePW)), s.client(s.mustLogin("bob", alicePW))

	// The TTL: capped, defaulting to the cap; bad input refused with nothing stored.
	before, _ := s.a.ListTokens(ctx)
	for _, req := range []api.CreateTokenRequest{{TTL: "25h"}, {TTL: "soon"}, {TTL: "-1h"}, {Description: strings.Repeat("x", 201)}, {Description: "bell\a"}, {Admin: true}} {
		_, err := alice.CreateAPIToken(ctx, req)
		if code := client.Code(err); code != http.StatusBadRequest && code != http.StatusForbidden {
			t.Errorf("CreateAPIToken(%+v): %v, want 400 or 403", req, err)
		}
	}
	if _, err := alice.CreateAPIToken(ctx, api.CreateTokenRequest{TTL: "25h"}); err == nil || !strings.Contains(err.Error(), "exceeds the server's maximum of 24h0m0s") {
		t.Errorf("over the cap: %v", err)
	}
	if after, _ := s.a.ListTokens(ctx); len(after) != len(before) {
		t.Errorf("refused requests stored tokens: %d → %d", len(before), len(after))
	}
	at, err := alice.CreateAPIToken(ctx, api.CreateTokenRequest{Description: "deploys"})
	if err != nil || !at.Expires.Equal(s.clock.t.Add(24*time.Hour)) || at.Description != "deploys" || at.User != "alice" || at.Admin {
		t.Fatalf("alice's token: %+v, %v", at, err)
	}
	short, err := alice.CreateAPIToken(ctx, api.CreateTokenRequest{TTL: "1h"})
	if err != nil || !short.Expires.Equal(s.clock.t.Add(time.Hour)) {
		t.Fatalf("a 1h token: %+v, %v", short, err)
	}
	bt, err := bob.CreateAPIToken(ctx, api.CreateTokenRequest{Description: "bob's"})
	if err != nil {
		t.Fatal(err)
	}

	// Each sees their own; the admin sees all.
	ids := func(c *client.Client) (out []string) {
		list, err := c.ListAPITokens(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range list {
			out = append(out, tk.User+"/"+tk.Description)
		}
		slices.Sort(out)
		return out
	}
	if got := ids(bob); !slices.Equal(got, []string{"bob/", "bob/bob's"}) {
		t.Errorf("bob sees %q", got)
	}
	if got := ids(s.admin); len(got) != 6 { // admin, 2 sessions, 3 tokens
		t.Errorf("the admin sees %q", got)
	}
	// Bob cannot revoke alice's token: it is not found for him.
	if _, err := bob.RevokeAPIToken(ctx, at.ID); client.Code(err) != http.StatusNotFound {
		t.Errorf("bob revokes alice's token: %v, want 404", err)
	}
	if !s.works(at.Token) {
		t.Error("alice's token stopped working")
	}
	if _, err := bob.RevokeAPIToken(ctx, bt.ID); err != nil || s.works(bt.Token) {
		t.Errorf("bob revokes his own: %v", err)
	}
	if _, err := s.admin.RevokeAPIToken(ctx, short.ID); err != nil || s.works(short.Token) {
		t.Errorf("the admin revokes alice's: %v", err)
	}
	// Admins may make admin tokens.
	adm, err := s.admin.CreateAPIToken(ctx, api.CreateTokenRequest{Admin: true, Description: "ops"})
	if err != nil || !adm.Admin {
		t.Fatalf("admin token: %+v, %v", adm, err)
	}
	if me, err := s.client(adm.Token).WhoAmI(ctx); err != nil || !me.Admin || me.User != "admin" {
		t.Errorf("the new admin token: %+v, %v", me, err)
	}
}

func TestSetPassword(t *testing.T) {
	s := newLoginServer(t, LoginConfig{Providers: []PasswordProvider{&fakeLDAP{}}})
	ctx := context.Background()
	for _, u := range []string{"alice", "bob"} {
		s.addUser(u, api.UserSpec{})
		s.admin.SetPassword(ctx, u, api.SetPasswordRequest{Password: alicePW})
	}
	s.addUser("lee", api.UserSpec{Provider: api.ProviderLDAP})
	alice := s.client(s.mustLogin("alice", alicePW))
	const newPW = "a much longer passphrase 42"
	for _, c := range []struct {
		c    *client.Client
		user string
		req  api.SetPasswordRequest
		code int
		msg  string
	}{
		{alice, "alice", api.SetPasswordRequest{Password: newPW}, 403, "current password is wrong"},
		{alice, "alice", api.SetPasswordRequest{OldPassword: "not it at all", Password: newPW}, 403, "current password is wrong"},
		{alice, "bob", api.SetPasswordRequest{OldPassword: alicePW, Password: newPW}, 403, "only their own"},
		{alice, "alice", api.SetPasswordRequest{OldPassword: alicePW, Password: "short"}, 422, "at least 12 characters"},
		{alice, "alice", api.SetPasswordRequest{OldPassword: alicePW, Password: "password1234"}, 422, "too common"},
		{s.admin, "alice", api.SetPasswordRequest{Password: "Alice"}, 422, "at least 12"},
		{s.admin, "nobody", api.SetPasswordRequest{Password: newPW}, 404, "no such user"},
		{s.admin, "lee", api.SetPasswordRequest{Password: newPW}, 400, "provider ldap"},
	} {
		err := c.c.SetPassword(ctx, c.user, c.req)
		if client.Code(err) != c.code || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("set %s's password (%+v): %v, want %d %q", c.user, c.req, err, c.code, c.msg)
		}
	}
	if _, err := s.login("alice", alicePW); err != nil {
		t.Errorf("refused changes changed the password: %v", err)
	}
	// A password change ends every other session of the user (whoever knew the old password
	// is shut out) but not the caller's own, and not the user's API tokens.
	stolen := s.mustLogin("alice", alicePW)
	at, err := alice.CreateAPIToken(ctx, api.CreateTokenRequest{Description: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.SetPassword(ctx, "alice", api.SetPasswordRequest{OldPassword: alicePW, Password: newPW}); err != nil {
		t.Fatal(err)
	}
	if s.works(stolen) {
		t.Error("another session of alice outlived her password change")
	}
	if _, err := alice.WhoAmI(ctx); err != nil {
		t.Errorf("the session that changed the password ended: %v", err)
	}
	if !s.works(at.Token) {
		t.Error("alice's API token ended with her password change")
	}
	if _, err := s.login("alice", alicePW); client.Code(err) != http.StatusUnauthorized {
		t.Errorf("the old password: %v", err)
	}
	bob := s.mustLogin("bob", alicePW)
	if err := s.admin.SetPassword(ctx, "bob", api.SetPasswordRequest{Password: newPW}); err != nil {
		t.Errorf("the admin sets bob's: %v", err)
	}
	if s.works(bob) {
		t.Error("bob's session outlived the admin resetting his password")
	}
	if !s.works(adminTok) {
		t.Error("the admin's own token ended with bob's reset")
	}
	s.mustLogin("bob", newPW)
	s.mustLogin("alice", newPW)

	// A login whose password was checked just before a change, and whose session is stored
	// after the change ended the sessions it found, gets none.
	const third = "a third password of bob's"
	s.a.login.afterCheck = func() {
		s.a.login.afterCheck = nil
		if err := s.admin.SetPassword(ctx, "bob", api.SetPasswordRequest{Password: third}); err != nil {
			t.Errorf("the admin sets bob's during his login: %v", err)
		}
	}
	if _, err := s.login("bob", newPW); client.Code(err) != http.StatusUnauthorized {
		t.Errorf("a login with the password changed during it: %v, want 401", err)
	}
	if after, _ := s.a.ListUserTokens(ctx, "bob"); len(after) != 0 {
		t.Errorf("bob has %d tokens after the login raced his password change, want none", len(after))
	}
	s.mustLogin("bob", third)
}

// A provider's user gets its User object at first login, refreshed at later ones; a name
// another provider owns, and a disabled user, are refused.
func TestProviderLogin(t *testing.T) {
	ldap := &fakeLDAP{pw: map[string]string{"lee": "ldap password 1234", "alice": "ldap password 1234", "dan": "ldap password 1234"},
		groups: map[string][]string{"lee": {"ops", "dev"}}}
	s := newLoginServer(t, LoginConfig{Providers: []PasswordProvider{ldap}})
	ctx := context.Background()
	s.addUser("alice", api.UserSpec{}) // local
	login := func(user string) (*api.LoginResponse, error) {
		return s.client("").Login(ctx, api.LoginRequest{Provider: "ldap", Username: user, Password: "ldap password 1234"})
	}
	resp, err := login("lee")
	if err != nil || !slices.Equal(resp.Groups, []string{"ops", "dev"}) {
		t.Fatalf("first ldap login: %+v, %v", resp, err)
	}
	if me, err := s.client(resp.Token).WhoAmI(ctx); err != nil || !slices.Equal(me.Groups, []string{"ops", "dev"}) {
		t.Errorf("the session's groups: %+v, %v", me, err)
	}
	u, found, err := s.a.getUser(ctx, "lee")
	if err != nil || !found || u.spec.Provider != "ldap" || !slices.Equal(u.spec.Groups, []string{"ops", "dev"}) ||
		u.status.LastLogin == nil || !u.status.LastLogin.Equal(s.clock.t) || u.status.GroupsRefreshed == nil {
		t.Fatalf("lee's User: %+v %+v, %v", u.spec, u.status, err)
	}
	ldap.groups["lee"] = []string{"ops"}
	s.clock.t = s.clock.t.Add(time.Hour)
	if _, err := login("lee"); err != nil {
		t.Fatal(err)
	}
	u, _, _ = s.a.getUser(ctx, "lee")
	if !slices.Equal(u.spec.Groups, []string{"ops"}) || !u.status.LastLogin.Equal(s.clock.t) || !u.status.GroupsRefreshed.Equal(s.clock.t) {
		t.Errorf("lee's User after the second login: %+v %+v", u.spec, u.status)
	}
	// The first session carries the groups as refreshed since.
	if me, err := s.client(resp.Token).WhoAmI(ctx); err != nil || !slices.Equal(me.Groups, []string{"ops"}) {
		t.Errorf("the first session's groups after a refresh: %+v, %v", me, err)
	}
	if _, err := login("alice"); client.Code(err) != http.StatusUnauthorized {
		t.Errorf("ldap login as a local user's name: %v, want 401", err)
	}
	if u, _, _ := s.a.getUser(ctx, "alice"); u.spec.Provider != "" {
		t.Errorf("the local alice was taken over: %+v", u.spec)
	}
	s.setDisabled("lee", true)
	if _, err := login("lee"); client.Code(err) != http.StatusUnauthorized {
		t.Errorf("a disabled ldap user logs in: %v", err)
	}
	// The local provider does not take a provider user's name either.
	if err := s.a.RecordLogin(ctx, api.ProviderLocal, Identity{User: "dan"}); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("local RecordLogin of an unknown user: %v", err)
	}
	if _, err := login("dan"); err != nil {
		t.Fatal(err)
	}
	if err := s.a.RecordLogin(ctx, api.ProviderLocal, Identity{User: "dan"}); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("local RecordLogin of an ldap user: %v", err)
	}
}

func TestLoginBadRequests(t *testing.T) {
	s := newLoginServer(t, LoginConfig{})
	for _, body := range []string{``, `{`, `{"username":"a"}`, `{"username":"a","password":"b","extra":1}`, `{"username":"a","password":"b"} {}`, `{"username":"` + strings.Repeat("a", 20000) + `"}`} {
		resp, err := http.Post(s.url+api.PathLogin, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("login with %.40q: %d, want 400 or 413", body, resp.StatusCode)
		}
	}
}

// SetUserDisabled alone refuses a user's cached tokens: the window between a check of the
// User and the cache entry it leaves is closed.
func TestSetUserDisabledBeatsTheCache(t *testing.T) {
	s := newLoginServer(t, LoginConfig{})
	ctx := context.Background()
	s.addUser("alice", api.UserSpec{})
	s.admin.SetPassword(ctx, "alice", api.SetPasswordRequest{Password: alicePW})
	session := s.mustLogin("alice", alicePW)
	if !s.works(session) {
		t.Fatal("a fresh session does not work")
	}
	s.a.SetUserDisabled("alice", true)
	if s.works(session) {
		t.Error("a cached token of a user marked disabled works")
	}
	s.a.SetUserDisabled("alice", false)
	if !s.works(session) {
		t.Error("enabled again, the (unrevoked) session does not work")
	}
	s.a.ForgetUser("alice")
	if s.works(session) {
		t.Error("a cached token of a user marked deleted works")
	}
	if n, err := s.a.RevokeUser(ctx, "alice"); n != 1 || err != nil {
		t.Errorf("RevokeUser = %d, %v; want the one session", n, err)
	}
	if !s.works(adminTok) {
		t.Error("the admin token stopped working")
	}
}

// BenchmarkLogin compares the work of a login's outcomes with the default hash parameters:
// an unknown user, a wrong password and a disabled user should cost what a success does.
func BenchmarkLogin(b *testing.B) {
	ctx := context.Background()
	st := openStore(b)
	a := NewAuthenticator(st)
	a.ConfigureLogin(LoginConfig{Logger: quiet, Limiter: users.NewLimiter(users.LimiterConfig{UserBurst: 1 << 30, UserEvery: time.Second, SourceBurst: 1 << 30, SourceEvery: time.Second, MaxKeys: 10})})
	for _, u := range []struct {
		name     string
		disabled bool
	}{{"alice", false}, {"dora", true}} {
		raw, _ := json.Marshal(api.UserSpec{Disabled: u.disabled})
		if _, err := st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{Kind: api.KindUser}, Metadata: api.ObjectMeta{Name: u.name}, Spec: raw}); err != nil {
			b.Fatal(err)
		}
		if err := a.SetPassword(ctx, u.name, alicePW); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct{ name, user, pw string }{
		{"success", "alice", alicePW}, {"wrong-password", "alice", "wrong password here"},
		{"unknown-user", "nobody", alicePW}, {"disabled-user", "dora", alicePW},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				resp, err := a.Login(ctx, api.LoginRequest{Username: c.user, Password: c.pw}, "127.0.0.1")
				if (err == nil) != (c.name == "success") {
					b.Fatalf("login: %v", err)
				}
				if resp != nil {
					b.StopTimer()
					a.RevokeUser(ctx, "alice")
					b.StartTimer()
				}
			}
		})
	}
}

// A replica that cached a user's token refuses it once another disables or deletes the user
// (its cache TTL here is longer than the test may wait).
func TestUserChangesFromAnotherReplica(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := newLoginServer(t, LoginConfig{})
	s.addUser("alice", api.UserSpec{})
	s.addUser("bob", api.UserSpec{})
	for _, u := range []string{"alice", "bob"} {
		s.admin.SetPassword(ctx, u, api.SetPasswordRequest{Password: alicePW})
	}
	alice, bob := s.mustLogin("alice", alicePW), s.mustLogin("bob", alicePW)
	two := NewAuthenticator(s.st)
	two.now, two.ttl = s.clock.now, 24*time.Hour
	go two.FollowRevocations(ctx, quiet)
	for _, tok := range []string{alice, bob} {
		if _, err := two.Authenticate(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the watch runs: a user created and deleted is then seen deleted.
	for deadline := time.Now().Add(10 * time.Second); !two.userBlocked("probe"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the other replica does not follow users")
		}
		s.st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{Kind: api.KindUser}, Metadata: api.ObjectMeta{Name: "probe"}})
		s.st.Delete(ctx, userKey("probe"), "")
	}
	// Straight in the store, so that no token is deleted: only the watch of users can tell.
	obj, _ := s.st.Get(ctx, userKey("alice"))
	obj.Spec = json.RawMessage(`{"disabled":true}`)
	if _, err := s.st.Update(ctx, obj); err != nil {
		t.Fatal(err)
	}
	if _, err := s.st.Delete(ctx, userKey("bob"), ""); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{alice, bob} {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if _, err := two.Authenticate(ctx, tok); errors.Is(err, ErrUnauthenticated) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the other replica still accepts the token of a disabled or deleted user")
			}
		}
	}
}

// The bootstrap admin token belongs to no User: a User named admin, disabled or deleted,
// does not take it along.
func TestBootstrapTokenOutlivesAUserNamedAdmin(t *testing.T) {
	s := newLoginServer(t, LoginConfig{})
	ctx := context.Background()
	s.addUser("admin", api.UserSpec{})
	s.admin.SetPassword(ctx, "admin", api.SetPasswordRequest{Password: alicePW})
	session := s.mustLogin("admin", alicePW)
	if me, err := s.client(session).WhoAmI(ctx); err != nil || me.Admin {
		t.Errorf("a local user named admin: %+v, %v; want no admin rights from the name", me, err)
	}
	s.setDisabled("admin", true)
	if s.works(session) || !s.works(adminTok) {
		t.Error("disabling the User admin: want its session refused, the bootstrap token working")
	}
	s.deleteUser("admin")
	if !s.works(adminTok) {
		t.Error("deleting the User admin stopped the bootstrap token")
	}
}

// A provider's users get their groups read again: a changed group applies at once to their
// sessions, a user the provider no longer has loses every token, a directory that cannot be
// reached changes nothing, and local users are left alone.
func TestRefreshGroups(t *testing.T) {
	dir := &fakeLDAP{pw: map[string]string{"alice": "ldap password 1234", "bob": "ldap password 5678"},
		groups: map[string][]string{"alice": {"admins", "devs"}, "bob": {"devs"}}}
	s := newLoginServer(t, LoginConfig{Providers: []PasswordProvider{dir}})
	ctx := context.Background()
	s.addUser("carol", api.UserSpec{})
	s.admin.SetPassword(ctx, "carol", api.SetPasswordRequest{Password: alicePW})
	ldapLogin := func(user string) string {
		resp, err := s.admin.Login(ctx, api.LoginRequest{Provider: api.ProviderLDAP, Username: user, Password: dir.pw[user]})
		if err != nil {
			t.Fatalf("login %s: %v", user, err)
		}
		return resp.Token
	}
	alice, bob, carol := ldapLogin("alice"), ldapLogin("bob"), s.mustLogin("carol", alicePW)
	groups := func(token string) []string {
		id, err := s.a.Authenticate(ctx, token)
		if err != nil {
			return nil
		}
		return sortedCopy(id.Groups)
	}
	if g := groups(alice); !slices.Equal(g, []string{"admins", "devs"}) {
		t.Fatalf("alice's groups at login: %q", g)
	}

	dir.groups["alice"] = []string{"devs"}
	delete(dir.pw, "bob")
	s.clock.t = s.clock.t.Add(time.Minute)
	res, err := s.a.RefreshGroupsOnce(ctx, dir)
	if err != nil || res != (RefreshResult{Refreshed: 1, Changed: 1, Revoked: 1}) {
		t.Errorf("refresh: %+v, %v; want alice refreshed and changed, bob revoked", res, err)
	}
	if g := groups(alice); !slices.Equal(g, []string{"devs"}) {
		t.Errorf("alice's session after the refresh has groups %q, want [devs] at once", g)
	}
	if s.works(bob) {
		t.Error("bob, gone from the directory, still has a session")
	}
	if !s.works(carol) {
		t.Error("a local user's session ended")
	}
	u, _, _ := s.a.getUser(ctx, "alice")
	if u.status.GroupsRefreshed == nil || !u.status.GroupsRefreshed.Equal(s.clock.t) {
		t.Errorf("alice's groupsRefreshed: %v, want %v", u.status.GroupsRefreshed, s.clock.t)
	}

	dir.groups["alice"] = nil
	dir.down = true
	if _, err := s.a.RefreshGroupsOnce(ctx, dir); err == nil {
		t.Error("a directory that cannot be reached: no error")
	}
	if g := groups(alice); !slices.Equal(g, []string{"devs"}) {
		t.Errorf("alice's groups after a failed refresh: %q, want them kept", g)
	}

	// One user who cannot be read keeps their groups and stops nobody else's refresh.
	dir.down = false
	for _, u := range []string{"dave", "erin"} {
		dir.pw[u] = "ldap password " + u
	}
	dave, erin := ldapLogin("dave"), ldapLogin("erin")
	dir.broken = map[string]bool{"alice": true}
	dir.groups["erin"] = []string{"ops"}
	res, err = s.a.RefreshGroupsOnce(ctx, dir)
	if err == nil || res != (RefreshResult{Refreshed: 2, Changed: 1, Failed: 1}) {
		t.Errorf("refresh with alice unreadable: %+v, %v; want dave and erin refreshed, alice failed", res, err)
	}
	if g := groups(erin); !slices.Equal(g, []string{"ops"}) {
		t.Errorf("erin's groups: %q, want [ops] despite alice", g)
	}
	// Most users "gone" at once (the service account lost its right to read them): nobody
	// is revoked.
	dir.broken = nil
	delete(dir.pw, "alice")
	delete(dir.pw, "dave")
	res, err = s.a.RefreshGroupsOnce(ctx, dir)
	if err == nil || res.Revoked != 0 || !s.works(alice) || !s.works(dave) {
		t.Errorf("two of three users gone: %+v, %v; want nobody revoked and an error", res, err)
	}
}
