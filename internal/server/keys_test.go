package server_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/secrets"
	"flotilla.dev/internal/server"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// startWith starts a server on dir with cfg changed by mutate, and returns it too.
func startWith(t testing.TB, dir string, mutate func(*server.Config)) (*testServer, *server.Server) {
	t.Helper()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cfg := server.Config{Listen: addr, DataDir: dir, BootstrapToken: adminToken,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Fleet:  fleet.Config{PollInterval: time.Second, StatusInterval: 100 * time.Millisecond}}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := server.New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ts := &testServer{url: "https://" + addr, checksum: s.CAChecksum(), cancel: cancel, done: make(chan error, 1), dir: dir}
	go func() { ts.done <- s.Serve(ctx) }()
	ts.admin, err = client.New(client.Config{Server: ts.url, Token: adminToken, CAChecksum: ts.checksum})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the server is ready", func() bool {
		_, err := ts.admin.List(context.Background(), api.KindCluster, "", client.ListOptions{Limit: 1})
		return err == nil && ready(ts)
	})
	t.Cleanup(ts.stop)
	return ts, s
}

// waitUntil waits for cond, failing the test after 20 s.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

func openStoreAt(t testing.TB, dir string) store.Store {
	t.Helper()
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := sqlite.Open(context.Background(), dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// systemObjects returns every object of kind in the system namespace.
func systemObjects(t testing.TB, st store.Store, kind string) []*api.Object {
	t.Helper()
	res, err := st.List(ctxT(t), store.ListOptions{Kind: kind, Namespace: auth.SystemNamespace})
	if err != nil {
		t.Fatal(err)
	}
	var out []*api.Object
	for _, raw := range res.Items {
		o, _ := store.Decode(raw)
		out = append(out, o)
	}
	return out
}

var base64ish = regexp.MustCompile(`[A-Za-z0-9+/=_-]{40,}`)

// TestDatabaseAloneForgesNoCredential: with a copy of the database and nothing else, no key
// to sign a cluster credential can be found in it. On the old code the signing key was a
// row of the database and this test forged a credential with it.
func TestDatabaseAloneForgesNoCredential(t *testing.T) {
	dir := t.TempDir()
	ts, s := startWith(t, dir, nil)
	tok := createToken(t, ts, "edge", api.RegistrationTokenSpec{})
	reg, err := ts.agent(t, "").Register(ctxT(t), tok, api.RegisterRequest{ClientID: "uid-forge"})
	if err != nil {
		t.Fatal(err)
	}
	if old := systemObjects(t, s.Store(), "ServerKey"); len(old) != 0 {
		t.Errorf("%d clear-text ServerKey rows in the database, want none", len(old))
	}
	_, signed, _ := strings.Cut(reg.Credential, ".")
	payload, sig, _ := strings.Cut(signed, ".")
	// Every 32-byte string the database's system records hold is tried as the signing key.
	res, err := s.Store().List(ctxT(t), store.ListOptions{Namespace: auth.SystemNamespace, Kind: "ServerKeyRing"})
	if err != nil {
		t.Fatal(err)
	}
	var everything []byte
	for _, raw := range res.Items {
		everything = append(everything, raw...)
	}
	for _, kind := range []string{"ServerKey", "APIToken", "RegistrationSecret"} {
		for _, o := range systemObjects(t, s.Store(), kind) {
			b, _ := json.Marshal(o)
			everything = append(everything, b...)
		}
	}
	tried := 0
	for _, m := range base64ish.FindAll(everything, -1) {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
			b, err := enc.DecodeString(string(m))
			if err != nil {
				continue
			}
			for i := 0; i+32 <= len(b); i++ {
				tried++
				for _, prefix := range []string{"fc2.", ""} {
					h := hmac.New(sha256.New, b[i:i+32])
					h.Write([]byte(prefix + payload))
					if base64.RawURLEncoding.EncodeToString(h.Sum(nil)) == sig {
						t.Fatalf("the database alone holds the credential-signing key")
					}
				}
			}
		}
	}
	if tried == 0 {
		t.Fatal("found nothing in the database to try")
	}
	fi, err := os.Stat(filepath.Join(dir, "keys", "kek"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key-encryption key file: %v, %v; want mode 0600", fi, err)
	}
}

// TestKeysMoveOutOfDatabase: an installation whose keys are clear-text rows of the database
// keeps working after the upgrade: the keys move into the wrapped ring, the rows are
// deleted, credentials and Secrets made with them still work and are renewed or re-encrypted.
func TestKeysMoveOutOfDatabase(t *testing.T) {
	dir := t.TempDir()
	ts, _ := startWith(t, dir, nil)
	tok := createToken(t, ts, "edge", api.RegistrationTokenSpec{})
	reg, err := ts.agent(t, "").Register(ctxT(t), tok, api.RegisterRequest{ClientID: "uid-legacy"})
	if err != nil {
		t.Fatal(err)
	}
	cl, _ := ts.admin.Get(ctxT(t), api.KindCluster, reg.Namespace, reg.ClusterName)
	ts.stop()

	// Make the data directory look like an old server's: keys in the clear, no KEK.
	st := openStoreAt(t, dir)
	ctx := ctxT(t)
	for _, o := range systemObjects(t, st, "ServerKeyRing") {
		if _, err := st.Delete(ctx, store.KeyOf(o), ""); err != nil {
			t.Fatal(err)
		}
	}
	credKey, secretKey := make([]byte, 32), make([]byte, 32)
	rand.Read(credKey)
	rand.Read(secretKey)
	for name, k := range map[string][]byte{"agent-credentials": credKey, "secret-encryption": secretKey} {
		spec, _ := json.Marshal(map[string][]byte{"key": k})
		if _, err := st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: "ServerKey"},
			Metadata: api.ObjectMeta{Namespace: auth.SystemNamespace, Name: name}, Spec: spec}); err != nil {
			t.Fatal(err)
		}
	}
	// A Secret sealed as the old server sealed it.
	block, _ := aes.NewCipher(secretKey)
	gcm, _ := cipher.NewGCM(block)
	nonce := make([]byte, gcm.NonceSize())
	rand.Read(nonce)
	plain, _ := json.Marshal(map[string][]byte{"password": []byte("hunter2")})
	sealed := "v1:" + base64.StdEncoding.EncodeToString(gcm.Seal(nonce, nonce, plain, []byte("fleet-default/git")))
	spec, _ := json.Marshal(api.SecretSpec{Type: api.SecretTypeBasicAuth, Data: map[string]string{"password": api.SecretRedacted}, Sealed: sealed})
	if _, err := st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindSecret},
		Metadata: api.ObjectMeta{Namespace: "fleet-default", Name: "git"}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	os.RemoveAll(filepath.Join(dir, "keys"))
	raw := reg.Namespace + "\x00" + reg.ClusterName + "\x00" + cl.Metadata.UID
	p := base64.RawURLEncoding.EncodeToString([]byte(raw))
	h := hmac.New(sha256.New, credKey)
	h.Write([]byte(p))
	legacyCred := "fc." + p + "." + base64.RawURLEncoding.EncodeToString(h.Sum(nil))

	ts2, s2 := startWith(t, dir, nil)
	if old := systemObjects(t, s2.Store(), "ServerKey"); len(old) != 0 {
		t.Errorf("%d clear-text keys left in the database after the start, want 0", len(old))
	}
	// The old credential works, and the agent is asked to renew it.
	var ds api.DesiredState
	hdr, err := ts2.agent(t, legacyCred).Do(ctxT(t), http.MethodGet, api.PathDesired+"?since=0", nil, &ds)
	if err != nil || hdr.Get(api.HeaderRenewCredential) == "" {
		t.Fatalf("poll with the old credential: %v, renew header %q", err, hdr.Get(api.HeaderRenewCredential))
	}
	renewed, err := ts2.agent(t, legacyCred).RenewCredential(ctxT(t))
	if err != nil || !strings.HasPrefix(renewed.Credential, "fc2.") || renewed.Expires == nil {
		t.Fatalf("renewing the old credential: %+v, %v", renewed, err)
	}
	hdr, err = ts2.agent(t, renewed.Credential).Do(ctxT(t), http.MethodGet, api.PathDesired+"?since=0", nil, &ds)
	if err != nil || hdr.Get(api.HeaderRenewCredential) != "" {
		t.Fatalf("poll with the renewed credential: %v, renew header %q", err, hdr.Get(api.HeaderRenewCredential))
	}
	// The Secret is sealed again under the new format, in the background.
	waitUntil(t, "the old Secret is re-encrypted", func() bool {
		o, err := s2.Store().Get(ctxT(t), store.Key{Kind: api.KindSecret, Namespace: "fleet-default", Name: "git"})
		var sp api.SecretSpec
		return err == nil && json.Unmarshal(o.Spec, &sp) == nil && strings.HasPrefix(sp.Sealed, "v2:")
	})
	ts2.stop()
	if got := openSecret(t, dir, "fleet-default", "git"); string(got.Data["password"]) != "hunter2" {
		t.Errorf("re-encrypted Secret holds %q, want the old value", got.Data["password"])
	}
}

// openSecret reads a Secret the way a restarted server would: store and keys from dir.
func openSecret(t testing.TB, dir, ns, name string) *secrets.Secret {
	t.Helper()
	st := openStoreAt(t, dir)
	defer st.Close()
	keys, err := auth.OpenKeys(ctxT(t), auth.KeysConfig{Store: st, DataDir: dir, Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ring, err := keys.Ring(ctxT(t), "secret-encryption")
	if err != nil {
		t.Fatal(err)
	}
	sec, err := secrets.New(st, ring).Get(ctxT(t), ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

// TestReplicaWithoutKEKRefuses: a server whose database holds wrapped keys, but which has no
// key-encryption key, refuses to start and says what to give it.
func TestReplicaWithoutKEKRefuses(t *testing.T) {
	dir := t.TempDir()
	ts, _ := startWith(t, dir, nil)
	ts.stop()
	kek, err := os.ReadFile(filepath.Join(dir, "keys", "kek"))
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "keys", "kek"))
	_, err = server.New(ctxT(t), server.Config{Listen: freeAddr(t), DataDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "--key-encryption-key-file") || !strings.Contains(err.Error(), auth.KEKEnv) {
		t.Fatalf("start without the KEK: %v; want a refusal naming --key-encryption-key-file and %s", err, auth.KEKEnv)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys", "kek")); err == nil {
		t.Error("the refused start made a new key-encryption key")
	}
	// Given as the environment would give it, the same KEK works.
	startWith(t, dir, func(c *server.Config) { c.KEK = strings.TrimSpace(string(kek)) })
}

// TestRegistrationTakeoverNeedsProof: the client ID is not a secret. Registering again as an
// existing cluster needs its credential or a token bound to it; another token's labels never
// reach an existing cluster. On the old code any valid token took the cluster over and
// added its labels.
func TestRegistrationTakeoverNeedsProof(t *testing.T) {
	ts, _ := startWith(t, t.TempDir(), nil)
	ctx := ctxT(t)
	anon := ts.agent(t, "")
	first := createToken(t, ts, "first", api.RegistrationTokenSpec{Labels: map[string]string{"site": "berlin"}})
	reg, err := anon.Register(ctx, first, api.RegisterRequest{ClientID: "uid-victim"})
	if err != nil {
		t.Fatal(err)
	}
	labels := func() map[string]string {
		o, err := ts.admin.Get(ctx, api.KindCluster, reg.Namespace, reg.ClusterName)
		if err != nil {
			t.Fatal(err)
		}
		return o.Metadata.Labels
	}
	attacker := createToken(t, ts, "other", api.RegistrationTokenSpec{Labels: map[string]string{"tier": "payments"}})
	_, err = anon.Register(ctx, attacker, api.RegisterRequest{ClientID: "uid-victim", Labels: map[string]string{"env": "prod"}})
	if client.Code(err) != http.StatusForbidden || client.Reason(err) != api.ReasonRegistrationRefused ||
		!strings.Contains(err.Error(), "flotilla token create --cluster "+reg.ClusterName) {
		t.Fatalf("taking over with only a token and the client ID: %v; want 403 %s saying what to do", err, api.ReasonRegistrationRefused)
	}
	if l := labels(); l["tier"] != "" || l["env"] != "" {
		t.Errorf("labels after a refused takeover: %v", l)
	}
	// A wrong credential (another cluster's) proves nothing.
	other, err := anon.Register(ctx, attacker, api.RegisterRequest{ClientID: "uid-other"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anon.Register(ctx, attacker, api.RegisterRequest{ClientID: "uid-victim", Credential: other.Credential}); client.Reason(err) != api.ReasonRegistrationRefused {
		t.Errorf("taking over with another cluster's credential: %v", err)
	}
	// Its own credential proves it; the other token's labels are still not added.
	again, err := anon.Register(ctx, attacker, api.RegisterRequest{ClientID: "uid-victim", Credential: reg.Credential, Labels: map[string]string{"env": "prod"}})
	if err != nil || again.ClusterName != reg.ClusterName {
		t.Fatalf("registering again with the cluster's credential: %+v, %v", again, err)
	}
	if l := labels(); l["tier"] != "" || l["env"] != "" || l["site"] != "berlin" {
		t.Errorf("labels after re-registering with the credential: %v; want only site=berlin", l)
	}
	// A token bound to the cluster takes it over (the operator's decision) and adds its labels.
	bound := createToken(t, ts, "rebuild", api.RegistrationTokenSpec{ClusterName: reg.ClusterName, MaxUses: 1, Labels: map[string]string{"rebuilt": "yes"}})
	if _, err := anon.Register(ctx, bound, api.RegisterRequest{ClientID: "uid-other"}); client.Reason(err) != api.ReasonTokenInvalid || !strings.Contains(err.Error(), "bound to cluster") {
		t.Errorf("a bound token used by another cluster: %v", err)
	}
	taken, err := anon.Register(ctx, bound, api.RegisterRequest{ClientID: "uid-victim"})
	if err != nil || taken.ClusterName != reg.ClusterName {
		t.Fatalf("taking over with a bound token: %+v, %v", taken, err)
	}
	if l := labels(); l["rebuilt"] != "yes" {
		t.Errorf("labels after the bound takeover: %v; want the bound token's", l)
	}
	if _, _, _, err := ts.agent(t, taken.Credential).Desired(ctx, 0); err != nil {
		t.Errorf("polling with the taken-over credential: %v", err)
	}
	// Binding a token to a name that cannot be a cluster's is refused when it is made.
	raw, _ := json.Marshal(api.RegistrationTokenSpec{ClusterName: "Not A Name"})
	_, err = ts.admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRegistrationToken},
		Metadata: api.ObjectMeta{Name: "bad", Namespace: api.DefaultNamespace}, Spec: raw})
	if client.Code(err) != http.StatusUnprocessableEntity || !strings.Contains(err.Error(), "spec.clusterName") {
		t.Errorf("a token bound to an invalid name: %v", err)
	}
}

// TestDeletedRegistrationTokenStopsAtOnce: a deleted token registers nothing more, at once,
// though it was just used (and cached). On the old code it kept working for seconds.
func TestDeletedRegistrationTokenStopsAtOnce(t *testing.T) {
	ts, s := startWith(t, t.TempDir(), nil)
	ctx := ctxT(t)
	anon := ts.agent(t, "")
	tok := createToken(t, ts, "soon-gone", api.RegistrationTokenSpec{})
	if _, err := anon.Register(ctx, tok, api.RegisterRequest{ClientID: "uid-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.admin.Delete(ctx, api.KindRegistrationToken, api.DefaultNamespace, "soon-gone", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := anon.Register(ctx, tok, api.RegisterRequest{ClientID: "uid-2"}); client.Reason(err) != api.ReasonTokenInvalid {
		t.Fatalf("registering with a token deleted a moment ago: %v; want %s", err, api.ReasonTokenInvalid)
	}
	// Deleted behind the API's back (another replica, a restore): the store's watch tells.
	tok2 := createToken(t, ts, "gone-too", api.RegistrationTokenSpec{})
	if _, err := anon.Register(ctx, tok2, api.RegisterRequest{ClientID: "uid-3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Store().Delete(ctx, store.Key{Kind: api.KindRegistrationToken, Namespace: api.DefaultNamespace, Name: "gone-too"}, ""); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the deletion in the store stops the token", func() bool {
		_, err := anon.Register(ctx, tok2, api.RegisterRequest{ClientID: "uid-4"})
		return client.Reason(err) == api.ReasonTokenInvalid
	})
}

// TestCredentialExpiresAndRenews: an expired credential gets 401 CredentialExpired, and
// renewing it within the grace period gives a working one.
func TestCredentialExpiresAndRenews(t *testing.T) {
	ts, _ := startWith(t, t.TempDir(), func(c *server.Config) { c.CredentialTTL = time.Second; c.CredentialGrace = time.Hour })
	ctx := ctxT(t)
	tok := createToken(t, ts, "edge", api.RegistrationTokenSpec{})
	reg, err := ts.agent(t, "").Register(ctx, tok, api.RegisterRequest{ClientID: "uid-exp"})
	if err != nil || reg.Expires == nil {
		t.Fatalf("register: %+v, %v; want an expiry", reg, err)
	}
	ag := ts.agent(t, reg.Credential)
	var lastErr error
	waitUntil(t, "the credential expires", func() bool {
		_, _, _, lastErr = ag.Desired(ctx, 0)
		return lastErr != nil
	})
	if client.Code(lastErr) != http.StatusUnauthorized || client.Reason(lastErr) != api.ReasonCredentialExpired || !strings.Contains(lastErr.Error(), "renew") {
		t.Fatalf("poll with an expired credential: %v; want 401 %s", lastErr, api.ReasonCredentialExpired)
	}
	renewed, err := ag.RenewCredential(ctx)
	if err != nil || renewed.Credential == reg.Credential {
		t.Fatalf("renewing within the grace: %+v, %v", renewed, err)
	}
	ag.SetToken(renewed.Credential)
	if _, _, _, err := ag.Desired(ctx, 0); err != nil && client.Reason(err) != api.ReasonCredentialExpired {
		t.Fatalf("poll with the renewed credential: %v", err)
	}
	// Garbage renews nothing.
	if _, err := ts.agent(t, "fc2.AAAA.BBBB").RenewCredential(ctx); client.Code(err) != http.StatusUnauthorized {
		t.Errorf("renewing a forged credential: %v, want 401", err)
	}
}

// TestKeyRotation: after --rotate-keys, credentials of the old key still work (and are asked
// to renew) for the grace period, and Secrets are re-encrypted under the new key.
func TestKeyRotation(t *testing.T) {
	dir := t.TempDir()
	ts, s := startWith(t, dir, nil)
	ctx := ctxT(t)
	tok := createToken(t, ts, "edge", api.RegistrationTokenSpec{})
	reg, err := ts.agent(t, "").Register(ctx, tok, api.RegisterRequest{ClientID: "uid-rot"})
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := json.Marshal(api.SecretSpec{Type: api.SecretTypeBasicAuth, StringData: map[string]string{"password": "s3cret"}})
	if _, err := ts.admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindSecret},
		Metadata: api.ObjectMeta{Namespace: api.DefaultNamespace, Name: "git"}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	sealedKey := func(st store.Store) string {
		o, err := st.Get(ctxT(t), store.Key{Kind: api.KindSecret, Namespace: api.DefaultNamespace, Name: "git"})
		if err != nil {
			t.Fatal(err)
		}
		var sp api.SecretSpec
		json.Unmarshal(o.Spec, &sp)
		id, _, _ := strings.Cut(strings.TrimPrefix(sp.Sealed, "v2:"), ":")
		return id
	}
	before := sealedKey(s.Store())
	ts.stop()

	ts2, s2 := startWith(t, dir, func(c *server.Config) { c.RotateKeys = true })
	hdr, err := ts2.agent(t, reg.Credential).Do(ctx, http.MethodGet, api.PathDesired+"?since=0", nil, nil)
	if err != nil || hdr.Get(api.HeaderRenewCredential) == "" {
		t.Fatalf("poll with a credential of the rotated-out key: %v, renew header %q; want 200 asking to renew", err, hdr.Get(api.HeaderRenewCredential))
	}
	renewed, err := ts2.agent(t, reg.Credential).RenewCredential(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hdr, err := ts2.agent(t, renewed.Credential).Do(ctx, http.MethodGet, api.PathDesired+"?since=0", nil, nil); err != nil || hdr.Get(api.HeaderRenewCredential) != "" {
		t.Fatalf("poll with the renewed credential: %v, renew header %q", err, hdr.Get(api.HeaderRenewCredential))
	}
	waitUntil(t, "the Secret is re-encrypted under the new key", func() bool { return sealedKey(s2.Store()) != before })
	ts2.stop()
	if got := openSecret(t, dir, api.DefaultNamespace, "git"); string(got.Data["password"]) != "s3cret" {
		t.Errorf("Secret after rotation holds %q", got.Data["password"])
	}
}

// TestAPITokenListAndRevoke: admins list tokens (never their values) and revoke one, which
// stops working at once.
func TestAPITokenListAndRevoke(t *testing.T) {
	ts, _ := startWith(t, t.TempDir(), nil)
	ctx := ctxT(t)
	tokens, err := ts.admin.ListAPITokens(ctx)
	if err != nil || len(tokens) != 1 || tokens[0].User != "admin" || !tokens[0].Admin {
		t.Fatalf("token list: %+v, %v; want the admin token", tokens, err)
	}
	if !strings.HasPrefix(auth.Hash(adminToken), tokens[0].ID) || len(tokens[0].ID) >= len(auth.Hash(adminToken)) {
		t.Errorf("token ID %q: want a short prefix of the hash", tokens[0].ID)
	}
	if _, err := ts.agent(t, "").ListAPITokens(ctx); client.Code(err) != http.StatusUnauthorized {
		t.Errorf("listing tokens without one: %v, want 401", err)
	}
	if _, err := ts.admin.RevokeAPIToken(ctx, "000000000000"); client.Code(err) != http.StatusNotFound {
		t.Errorf("revoking an unknown ID: %v, want 404", err)
	}
	if _, err := ts.admin.RevokeAPIToken(ctx, tokens[0].ID); err != nil {
		t.Fatal(err)
	}
	// The token was used (and cached) a moment ago; it is refused now.
	if _, err := ts.admin.List(ctx, api.KindCluster, "", client.ListOptions{}); client.Code(err) != http.StatusUnauthorized {
		t.Fatalf("a request with the revoked token: %v, want 401", err)
	}
}

// TestRotateKeysThroughAPI: an admin rotates the keys of a running server; credentials of
// the old key keep working and are asked to renew; no one else may rotate.
func TestRotateKeysThroughAPI(t *testing.T) {
	ts, _ := startWith(t, t.TempDir(), nil)
	ctx := ctxT(t)
	tok := createToken(t, ts, "edge", api.RegistrationTokenSpec{})
	reg, err := ts.agent(t, "").Register(ctx, tok, api.RegisterRequest{ClientID: "uid-api-rot"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.agent(t, reg.Credential).RotateKeys(ctx); client.Code(err) != http.StatusUnauthorized {
		t.Errorf("a cluster rotating the keys: %v, want 401", err)
	}
	r, err := ts.admin.RotateKeys(ctx)
	if err != nil || r.CredentialKey == "" || r.SecretKey == "" {
		t.Fatalf("RotateKeys = %+v, %v", r, err)
	}
	hdr, err := ts.agent(t, reg.Credential).Do(ctx, http.MethodGet, api.PathDesired+"?since=0", nil, nil)
	if err != nil || hdr.Get(api.HeaderRenewCredential) == "" {
		t.Fatalf("poll with a credential of the old key: %v, renew header %q", err, hdr.Get(api.HeaderRenewCredential))
	}
	renewed, err := ts.agent(t, reg.Credential).RenewCredential(ctx)
	if err != nil || !strings.Contains(renewed.Credential, ".") {
		t.Fatalf("renewing after the rotation: %+v, %v", renewed, err)
	}
}
