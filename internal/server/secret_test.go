package server_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// A Secret's values go in and never come out: every response shows keys with redacted values,
// and the database holds them only encrypted.
func TestSecretsNeverReturned(t *testing.T) {
	dir := t.TempDir()
	ts := start(t, dir)
	ctx := ctxT(t)
	const password = "hunter2-very-secret-value"
	raw, _ := json.Marshal(api.SecretSpec{Type: api.SecretTypeBasicAuth, StringData: map[string]string{"username": "deploy", "password": password}})
	obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindSecret},
		Metadata: api.ObjectMeta{Name: "git-auth", Namespace: api.DefaultNamespace}, Spec: raw}

	w, err := ts.admin.Watch(ctx, api.KindSecret, api.DefaultNamespace, "", "")
	if err != nil {
		t.Fatal(err)
	}
	created, err := ts.admin.Create(ctx, obj)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, spec json.RawMessage) {
		t.Helper()
		if bytes.Contains(spec, []byte(password)) || bytes.Contains(spec, []byte("sealed")) || bytes.Contains(spec, []byte("deploy")) {
			t.Errorf("%s shows a value: %s", what, spec)
		}
		var s api.SecretSpec
		json.Unmarshal(spec, &s)
		want := map[string]string{"username": api.SecretRedacted, "password": api.SecretRedacted}
		if s.Type != api.SecretTypeBasicAuth || len(s.Data) != 2 || s.Data["username"] != want["username"] || s.Data["password"] != want["password"] {
			t.Errorf("%s: got %s, want type %s and both keys redacted", what, spec, api.SecretTypeBasicAuth)
		}
	}
	check("create response", created.Spec)
	got, err := ts.admin.Get(ctx, api.KindSecret, api.DefaultNamespace, "git-auth")
	if err != nil {
		t.Fatal(err)
	}
	check("get", got.Spec)
	l, err := ts.admin.List(ctx, api.KindSecret, "", client.ListOptions{})
	if err != nil || len(l.Items) != 1 {
		t.Fatalf("list: %v, %d items", err, len(l.Items))
	}
	var listed api.Object
	json.Unmarshal(l.Items[0], &listed)
	check("list", listed.Spec)
	select {
	case ev := <-w:
		var o api.Object
		json.Unmarshal(ev.Object, &o)
		check("watch", o.Spec)
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event")
	}

	// Applying what get returned (values redacted) changes nothing.
	got.Metadata.ResourceVersion = ""
	if _, result, err := ts.admin.Apply(ctx, got, false); err != nil || result != "unchanged" {
		t.Errorf("re-applying the redacted secret: %q, %v; want unchanged", result, err)
	}
	// A redacted value for a key that was never stored is refused.
	bad := got.DeepCopy()
	var bs api.SecretSpec
	json.Unmarshal(bad.Spec, &bs)
	bs.Data["token"] = api.SecretRedacted
	bad.Spec, _ = json.Marshal(bs)
	if _, _, err := ts.admin.Apply(ctx, bad, false); err == nil || !strings.Contains(err.Error(), "spec.data.token") {
		t.Errorf("redacted value for a new key: %v", err)
	}
	// A client cannot plant sealed data.
	bs.Data = nil
	bs.Sealed = "v1:AAAA"
	bad.Spec, _ = json.Marshal(bs)
	if _, _, err := ts.admin.Apply(ctx, bad, false); err == nil || !strings.Contains(err.Error(), "spec.sealed") {
		t.Errorf("client-set sealed data: %v", err)
	}

	// On disk: only ciphertext.
	ts.stop()
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if bytes.Contains(data, []byte(password)) {
			t.Errorf("%s holds the password in plain text", filepath.Base(f))
		}
	}
}
