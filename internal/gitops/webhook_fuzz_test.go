package gitops

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/internal/secrets"
	"flotilla.dev/internal/store"
)

// hookSecrets holds the one webhook secret of the fuzzed GitRepo.
type hookSecrets map[string][]byte

func (h hookSecrets) Get(_ context.Context, ns, name string) (*secrets.Secret, error) {
	if ns != api.DefaultNamespace || name != "hook" {
		return nil, errors.New("no such secret")
	}
	return &secrets.Secret{Data: h}, nil
}

const (
	fuzzGitHubKey = "github-hmac-key"
	fuzzGitLabKey = "gitlab-token"
)

func githubSig(key, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// FuzzWebhook posts arbitrary payloads and headers to the webhook of a controller following
// one repository: it never panics, answers with a status it documents, and triggers the
// GitRepo only for a push signed with its secret: an HMAC of the very body for GitHub, the
// token itself for GitLab.
func FuzzWebhook(f *testing.F) {
	gh := `{"ref":"refs/heads/main","repository":{"clone_url":"https://example.com/org/repo.git"}}`
	gl := `{"ref":"refs/heads/main","project":{"git_http_url":"https://example.com/org/repo.git"}}`
	f.Add([]byte(gh), uint8(0), githubSig([]byte(fuzzGitHubKey), []byte(gh)))
	f.Add([]byte(gh), uint8(0), githubSig([]byte("another key"), []byte(gh)))
	f.Add([]byte(gh), uint8(0), strings.ToUpper(githubSig([]byte(fuzzGitHubKey), []byte(gh))))
	f.Add([]byte(gh), uint8(0), "sha256=")
	f.Add([]byte(gh), uint8(0), "sha1=00")
	f.Add([]byte(gl), uint8(1), fuzzGitLabKey)
	f.Add([]byte(gl), uint8(1), fuzzGitLabKey+" ")
	f.Add([]byte(gl), uint8(1), "")
	f.Add([]byte(`{"ref":`), uint8(0), "")
	f.Add([]byte(`{"ref":"refs/heads/main","repository":{"ssh_url":"git@EXAMPLE.com:org/repo.git"}}`), uint8(2), "x")
	f.Add([]byte(`{"zen":"hi"}`), uint8(3), "")

	c := New(Config{Secrets: hookSecrets{"github": []byte(fuzzGitHubKey), "gitlab": []byte(fuzzGitLabKey)},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	spec, _ := json.Marshal(api.GitRepoSpec{Repo: "https://example.com/org/repo", Branch: "main", WebhookSecret: "hook"})
	obj := &api.Object{Metadata: api.ObjectMeta{Namespace: api.DefaultNamespace, Name: "app"}, Spec: spec}
	key := store.KeyOf(obj)
	w := &worker{key: key, kick: make(chan struct{}, 1), done: make(chan struct{}), obj: obj}
	c.repos[key] = w

	f.Fuzz(func(t *testing.T, body []byte, kind uint8, sig string) {
		select {
		case <-w.kick:
		default:
		}
		r := httptest.NewRequest(http.MethodPost, WebhookPath, bytes.NewReader(body))
		var provider string
		switch kind % 4 {
		case 0:
			provider = "github"
			r.Header.Set("X-GitHub-Event", "push")
			r.Header.Set("X-Hub-Signature-256", sig)
		case 1:
			provider = "gitlab"
			r.Header.Set("X-Gitlab-Event", "Push Hook")
			r.Header.Set("X-Gitlab-Token", sig)
		case 2:
			r.Header.Set("X-GitHub-Event", "ping")
		}
		rec := httptest.NewRecorder()
		c.webhook(rec, r)
		switch rec.Code {
		case http.StatusOK, http.StatusAccepted, http.StatusBadRequest, http.StatusUnauthorized, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("status %d", rec.Code)
		}
		triggered := false
		select {
		case <-w.kick:
			triggered = true
		default:
		}
		if triggered != (rec.Code == http.StatusAccepted) {
			t.Fatalf("status %d, triggered %v", rec.Code, triggered)
		}
		if !triggered {
			return
		}
		// Only a genuine signature gets here.
		switch provider {
		case "github":
			want := githubSig([]byte(fuzzGitHubKey), body)
			if !strings.EqualFold(r.Header.Get("X-Hub-Signature-256"), want) {
				t.Fatalf("triggered with signature %q, want %q", sig, want)
			}
		case "gitlab":
			if r.Header.Get("X-Gitlab-Token") != fuzzGitLabKey {
				t.Fatalf("triggered with token %q", sig)
			}
		default:
			t.Fatalf("triggered by a %q event", provider)
		}
	})
}

// FuzzSignedBy checks the signature check alone: a signature made with another key, or for
// another body, is never accepted, and the genuine one always is.
func FuzzSignedBy(f *testing.F) {
	f.Add([]byte("body"), []byte("key"), []byte("other"), "")
	f.Add([]byte(""), []byte("k"), []byte("k"), "sha256=")
	f.Add([]byte("{}"), []byte(""), []byte("x"), "sha256=00")
	f.Fuzz(func(t *testing.T, body, key, other []byte, forged string) {
		h := http.Header{}
		h.Set("X-Hub-Signature-256", githubSig(key, body))
		if got := signedBy("github", h, body, key); got != (len(key) > 0) {
			t.Fatalf("genuine signature: accepted %v", got)
		}
		if !bytes.Equal(key, other) && len(other) > 0 {
			h.Set("X-Hub-Signature-256", githubSig(other, body))
			if signedBy("github", h, body, key) && !hmac.Equal(mac(other, body), mac(key, body)) {
				t.Fatal("a signature made with another key was accepted")
			}
		}
		h.Set("X-Hub-Signature-256", forged)
		if signedBy("github", h, body, key) && !strings.EqualFold(forged, githubSig(key, body)) {
			t.Fatalf("forged signature %q accepted", forged)
		}
		h.Set("X-Gitlab-Token", forged)
		if signedBy("gitlab", h, body, key) != (len(key) > 0 && forged != "" && forged == string(key)) {
			t.Fatalf("GitLab token %q against key %q", forged, key)
		}
		if signedBy("bitbucket", h, body, key) {
			t.Fatal("an unknown provider was accepted")
		}
	})
}

func mac(key, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return m.Sum(nil)
}
