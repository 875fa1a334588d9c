package gitops

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// WebhookPath receives push events from git hosts.
const WebhookPath = "/v1/webhooks/git"

// maxPayload bounds a webhook body; push payloads listing many commits stay well below it.
const maxPayload = 5 << 20

// Register adds the webhook endpoint to mux. It takes no bearer token: a push is
// authenticated by the GitRepo's webhook secret (spec.webhookSecret names a Secret whose key
// "github" holds GitHub's HMAC secret and "gitlab" GitLab's token, as in Fleet).
func (c *Controller) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST "+WebhookPath, c.webhook)
}

// push is what a push event says, whichever host sent it.
type push struct {
	provider string // "github" or "gitlab"
	ref      string
	urls     []string
}

func parsePush(r *http.Request, body []byte) (*push, error) {
	switch {
	case r.Header.Get("X-GitHub-Event") != "":
		var p struct {
			Ref        string `json:"ref"`
			Repository struct {
				HTMLURL  string `json:"html_url"`
				CloneURL string `json:"clone_url"`
				SSHURL   string `json:"ssh_url"`
				GitURL   string `json:"git_url"`
				URL      string `json:"url"`
			} `json:"repository"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return nil, fmt.Errorf("malformed GitHub payload: %v", err)
		}
		rp := p.Repository
		return &push{provider: "github", ref: p.Ref, urls: []string{rp.HTMLURL, rp.CloneURL, rp.SSHURL, rp.GitURL, rp.URL}}, nil
	case r.Header.Get("X-Gitlab-Event") != "":
		var p struct {
			Ref     string `json:"ref"`
			Project struct {
				WebURL     string `json:"web_url"`
				GitHTTPURL string `json:"git_http_url"`
				GitSSHURL  string `json:"git_ssh_url"`
			} `json:"project"`
			Repository struct {
				Homepage   string `json:"homepage"`
				GitHTTPURL string `json:"git_http_url"`
				GitSSHURL  string `json:"git_ssh_url"`
			} `json:"repository"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return nil, fmt.Errorf("malformed GitLab payload: %v", err)
		}
		return &push{provider: "gitlab", ref: p.Ref, urls: []string{p.Project.WebURL, p.Project.GitHTTPURL, p.Project.GitSSHURL,
			p.Repository.Homepage, p.Repository.GitHTTPURL, p.Repository.GitSSHURL}}, nil
	}
	return nil, errors.New("not a GitHub or GitLab event (no X-GitHub-Event or X-Gitlab-Event header)")
}

// normalizeRepoURL reduces the ways of writing a repository's address to one: host and path,
// lower-case host, without scheme, user, port, ".git" or trailing slash.
func normalizeRepoURL(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	var host, p string
	if m := scpLike.FindStringSubmatch(s); m != nil {
		host, p = m[2], m[3]
	} else {
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return ""
		}
		host, p = u.Hostname(), u.Path
	}
	p = strings.TrimSuffix(strings.Trim(p, "/"), ".git")
	return strings.ToLower(host) + "/" + p
}

type webhookResult struct {
	Triggered []string `json:"triggered"`
	Message   string   `json:"message,omitempty"`
}

func (c *Controller) webhook(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPayload))
	if err != nil {
		writeHookError(w, http.StatusRequestEntityTooLarge, api.ReasonTooLarge, fmt.Sprintf("payload over %d bytes", maxPayload))
		return
	}
	if c.cfg.Leading != nil && !c.cfg.Leading() {
		w.Header().Set("Retry-After", "1")
		writeHookError(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "this server replica does not run git sync (another replica leads); retry, or send webhooks to the leader")
		return
	}
	if ev := r.Header.Get("X-GitHub-Event"); ev == "ping" {
		writeHookJSON(w, http.StatusOK, webhookResult{Message: "pong"})
		return
	}
	p, err := parsePush(r, body)
	if err != nil {
		writeHookError(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
		return
	}
	urls := map[string]bool{}
	for _, u := range p.urls {
		if n := normalizeRepoURL(u); n != "" {
			urls[n] = true
		}
	}
	branch, isBranch := strings.CutPrefix(p.ref, "refs/heads/")
	var candidates []*worker
	c.mu.Lock()
	for _, wk := range c.repos {
		var spec api.GitRepoSpec
		if json.Unmarshal(wk.current().Spec, &spec) != nil || !urls[normalizeRepoURL(spec.Repo)] {
			continue
		}
		// A push to another branch does not concern a GitRepo following a branch; one
		// pinned to a revision fetches anyway, as its tag may have moved.
		// One following the remote's default branch fetches on any branch push, as which
		// branch is the default is only known by asking the remote.
		if spec.Revision == "" && (!isBranch || (spec.Branch != "" && branch != spec.Branch)) {
			continue
		}
		candidates = append(candidates, wk)
	}
	c.mu.Unlock()

	res := webhookResult{Triggered: []string{}}
	refused := 0
	for _, wk := range candidates {
		obj := wk.current()
		var spec api.GitRepoSpec
		json.Unmarshal(obj.Spec, &spec)
		if !c.verify(r, body, p.provider, obj.Metadata.Namespace, spec.WebhookSecret) {
			refused++
			continue
		}
		wk.trigger()
		res.Triggered = append(res.Triggered, obj.Metadata.Namespace+"/"+obj.Metadata.Name)
	}
	switch {
	case len(res.Triggered) > 0:
		c.log.Info("webhook: fetching", "provider", p.provider, "ref", p.ref, "gitrepos", res.Triggered)
		writeHookJSON(w, http.StatusAccepted, res)
	case refused > 0:
		c.log.Warn("webhook: signature refused", "provider", p.provider, "ref", p.ref, "remote", r.RemoteAddr)
		writeHookError(w, http.StatusUnauthorized, api.ReasonUnauthorized, "the webhook's signature or token does not match the webhook secret of any GitRepo for this repository")
	default:
		res.Message = "no GitRepo follows this repository and branch"
		writeHookJSON(w, http.StatusOK, res)
	}
}

// verify checks a push against the GitRepo's webhook secret. A GitRepo without one is never
// triggered by a webhook: the endpoint is open to the world.
func (c *Controller) verify(r *http.Request, body []byte, provider, ns, secretName string) bool {
	if secretName == "" {
		return false
	}
	sec, err := c.cfg.Secrets.Get(r.Context(), ns, secretName)
	if err != nil {
		c.log.Warn("webhook: reading the webhook secret", "secret", store.Key{Kind: api.KindSecret, Namespace: ns, Name: secretName}.String(), "err", err)
		return false
	}
	return signedBy(provider, r.Header, body, sec.Data[provider])
}

// signedBy reports whether a push with body and header was sent by the holder of key: for
// GitHub an HMAC-SHA256 of the body in X-Hub-Signature-256, for GitLab the token itself in
// X-Gitlab-Token. An empty key accepts nothing.
func signedBy(provider string, h http.Header, body, key []byte) bool {
	if len(key) == 0 {
		return false
	}
	switch provider {
	case "github":
		sig, ok := strings.CutPrefix(h.Get("X-Hub-Signature-256"), "sha256=")
		got, err := hex.DecodeString(sig)
		if !ok || err != nil {
			return false
		}
		m := hmac.New(sha256.New, key)
		m.Write(body)
		return hmac.Equal(got, m.Sum(nil))
	case "gitlab":
		tok := h.Get("X-Gitlab-Token")
		return tok != "" && subtle.ConstantTimeCompare([]byte(tok), key) == 1
	}
	return false
}

func writeHookJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeHookError(w http.ResponseWriter, code int, reason, msg string) {
	writeHookJSON(w, code, api.Status{TypeMeta: api.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure", Code: code, Reason: reason, Message: msg})
}
