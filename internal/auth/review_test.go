package auth

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/users"
)

// caseless is a directory that matches names as LDAP servers do: ignoring case and
// surrounding spaces.
type caseless struct{ fakeLDAP }

func (f *caseless) Authenticate(ctx context.Context, user, pw string) (Identity, error) {
	return f.fakeLDAP.Authenticate(ctx, strings.ToLower(strings.TrimSpace(user)), pw)
}

// The per-user limit must hold for every spelling the provider takes as the same user: else
// each of alice, Alice, ALICE, "alice " … gets its own bucket of guesses.
func TestReviewLoginLimitCoversSpellings(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	lim := users.NewLimiter(users.LimiterConfig{UserBurst: 3, UserEvery: time.Minute, SourceBurst: 1000, SourceEvery: time.Second, MaxKeys: 100, Now: c.now})
	s := newLoginServer(t, LoginConfig{Limiter: lim, Providers: []PasswordProvider{&caseless{fakeLDAP{pw: map[string]string{"lee": "ldap password 1234"}}}}})
	try := func(name string) int {
		t.Helper()
		body := `{"provider":"ldap","username":"` + name + `","password":"wrong guess"}`
		resp, err := http.Post(s.url+api.PathLogin, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for range 3 {
		if code := try("lee"); code != http.StatusUnauthorized {
			t.Fatalf("a wrong password: %d", code)
		}
	}
	for _, name := range []string{"LEE", "Lee", " lee", "lee "} {
		if code := try(name); code != http.StatusTooManyRequests {
			t.Errorf("guessing as %q after lee's burst: %d, want 429", name, code)
		}
	}
}
