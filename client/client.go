// Package client is the Go client of Flotilla's API, used by the CLI, the agent, the
// simulator and tests. It speaks HTTPS with the server's CA given as PEM or pinned by its
// sha256 checksum, and returns API errors as *api.Status.
package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"flotilla.dev/api"
)

// Config says how to reach a server.
type Config struct {
	// Server is the server's URL, or several replicas' URLs separated by commas: calls go
	// to one until it cannot be reached, then to the next.
	Server string
	Token  string
	// CAData is the server CA in PEM. Alternatively CAChecksum pins the CA by the sha256 of
	// its PEM, and the CA is taken from the server's handshake.
	CAData     []byte
	CAChecksum string
	// Insecure skips verification; for experiments only.
	Insecure bool
	Timeout  time.Duration
	// Transport, if set, is used as is (tests, the simulator's shared pools).
	Transport http.RoundTripper
}

// Client calls one server, or one of several replicas of it.
type Client struct {
	bases []string
	// cur indexes bases: the replica calls go to.
	cur  *atomic.Int32
	cred *credential
	http *http.Client
	// tunnel is told the token of every poll answer saying a tunnel is wanted.
	tunnel func(token string)
	// doorbell is told the doorbell every poll answer advertises.
	doorbell func(DoorbellAd)
}

// DoorbellAd is what a poll answer says of the server's doorbell.
type DoorbellAd struct {
	// Port is its UDP port (api.HeaderDoorbell), 0 when the server offers none.
	Port int
	// PollAfter is when to poll again while the doorbell answers (api.HeaderBellPollAfter),
	// 0 when the server does not count the cluster as pinging.
	PollAfter time.Duration
}

// OnDoorbell makes every poll answer call f with what it says of the server's doorbell.
func (c *Client) OnDoorbell(f func(DoorbellAd)) { c.doorbell = f }

// Host is the host name (or address) of the URL of the replica calls go to now.
func (c *Client) Host() string {
	u, err := url.Parse(c.Server())
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// OnTunnelWanted makes every poll answer that asks for the cluster's tunnel call f with its
// one-time token (api.HeaderTunnelToken).
func (c *Client) OnTunnelWanted(f func(token string)) { c.tunnel = f }

// Credential returns the bearer token in use.
func (c *Client) Credential() string { return c.bearer() }

// credential is the client's bearer token. An agent's is replaced when it renews it, while
// its other calls go on: SetToken changes it for every call after.
type credential struct {
	token atomic.Pointer[string]
	// renew: an answer asked for the credential to be renewed (api.HeaderRenewCredential).
	renew atomic.Bool
}

func newCredential(token string) *credential {
	c := &credential{}
	c.token.Store(&token)
	return c
}

func (c *Client) bearer() string { return *c.cred.token.Load() }

// SetToken replaces the bearer token of c (and of nothing it was copied from).
func (c *Client) SetToken(token string) {
	c.cred.token.Store(&token)
	c.cred.renew.Store(false)
}

// RenewRequested reports whether the server asked, since the token was last set, that the
// cluster credential be renewed.
func (c *Client) RenewRequested() bool { return c.cred.renew.Load() }

func (c *Client) noteRenewal(h http.Header) {
	if h.Get(api.HeaderRenewCredential) != "" {
		c.cred.renew.Store(true)
	}
}

// Servers splits a list of server URLs separated by commas, and checks each.
func Servers(list string) ([]string, error) {
	var out []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimRight(strings.TrimSpace(s), "/")
		u, err := url.Parse(s)
		if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
			return nil, fmt.Errorf("invalid server URL %.200q: want https://host:port", s)
		}
		out = append(out, s)
	}
	if len(out) > 16 {
		return nil, fmt.Errorf("%d server URLs: at most 16", len(out))
	}
	return out, nil
}

// New returns a client for cfg.
func New(cfg Config) (*Client, error) {
	bases, err := Servers(cfg.Server)
	if err != nil {
		return nil, err
	}
	rt := cfg.Transport
	if rt == nil {
		tc, err := TLSConfig(cfg.CAData, cfg.CAChecksum, cfg.Insecure)
		if err != nil {
			return nil, err
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tc
		tr.ForceAttemptHTTP2 = true
		tr.MaxIdleConnsPerHost = 16
		rt = tr
	}
	return &Client{bases: bases, cur: new(atomic.Int32), cred: newCredential(cfg.Token), http: &http.Client{Transport: rt, Timeout: cfg.Timeout}}, nil
}

// Server returns the URL calls go to now: with several replicas, the one last reached.
func (c *Client) Server() string { return c.bases[c.cur.Load()] }

// Servers returns every server URL the client was given.
func (c *Client) Servers() []string { return slices.Clone(c.bases) }

// failedOver moves calls to the next replica after the one at index i could not be
// reached (unless another call moved them already), and reports whether there is one.
func (c *Client) failedOver(i int32) bool {
	if len(c.bases) < 2 {
		return false
	}
	c.cur.CompareAndSwap(i, (i+1)%int32(len(c.bases)))
	return true
}

// unreachable reports an error that means the server was not reached at all (nothing was
// sent), so the call may go to another replica as it is.
func unreachable(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// CloseIdleConnections closes the client's connections that no request is using.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// ChecksumPEM returns the checksum a CA's PEM is pinned by.
func ChecksumPEM(caPEM []byte) string {
	h := sha256.Sum256(caPEM)
	return hex.EncodeToString(h[:])
}

// TLSConfig builds the client TLS configuration for a CA given as PEM or pinned by checksum.
func TLSConfig(caPEM []byte, checksum string, insecure bool) (*tls.Config, error) {
	// A session cache lets a reconnect resume the TLS session: agents of a large fleet
	// reconnect for each poll, and a resumed handshake spares the server its signature.
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	switch {
	case insecure:
		tc.InsecureSkipVerify = true
	case len(caPEM) > 0:
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("the CA file holds no PEM certificate")
		}
		if checksum != "" && ChecksumPEM(caPEM) != strings.ToLower(checksum) {
			return nil, errors.New("the CA does not match the given checksum")
		}
		tc.RootCAs = pool
	case checksum != "":
		want := strings.ToLower(strings.TrimPrefix(checksum, "sha256:"))
		// The server sends its CA after its leaf. Trust the chain only if that CA is the
		// pinned one, then verify the leaf against it as usual, host name included.
		tc.InsecureSkipVerify = true
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			var ca *x509.Certificate
			for _, c := range cs.PeerCertificates {
				if ChecksumPEM(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})) == want {
					ca = c
				}
			}
			if ca == nil || len(cs.PeerCertificates) == 0 {
				return errors.New("the server's CA does not match the pinned checksum")
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, DNSName: cs.ServerName})
			return err
		}
	}
	return tc, nil
}

// FetchCA connects to server (or to the first of several replicas' URLs, separated by
// commas, that answers), checks that the CA it presents matches checksum, and returns the
// CA's PEM (for `flotilla login` and agents to keep).
func FetchCA(ctx context.Context, server, checksum string) ([]byte, error) {
	servers, err := Servers(server)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, s := range servers {
		ca, err := fetchCA(ctx, s, checksum)
		if err == nil || strings.Contains(err.Error(), "checksum") {
			return ca, err
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

func fetchCA(ctx context.Context, server, checksum string) ([]byte, error) {
	u, err := url.Parse(server)
	if err != nil {
		return nil, fmt.Errorf("invalid server URL: %w", err)
	}
	tc, err := TLSConfig(nil, checksum, false)
	if err != nil {
		return nil, err
	}
	host := u.Host
	if u.Port() == "" {
		host += ":443"
	}
	d := tls.Dialer{Config: tc}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", host, err)
	}
	defer conn.Close()
	want := strings.ToLower(strings.TrimPrefix(checksum, "sha256:"))
	for _, c := range conn.(*tls.Conn).ConnectionState().PeerCertificates {
		p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		if ChecksumPEM(p) == want {
			return p, nil
		}
	}
	return nil, errors.New("the server's CA does not match the pinned checksum")
}

// Path returns the URL path of a kind's collection (ns "" means all namespaces) or object.
// A global kind has no namespace: ns is ignored.
func Path(kind api.KindInfo, ns, name string) string {
	p := "/apis/" + api.APIVersion
	if ns != "" && !kind.Global {
		p += "/namespaces/" + url.PathEscape(ns)
	}
	p += "/" + kind.Plural
	if name != "" {
		p += "/" + url.PathEscape(name)
	}
	return p
}

func kindInfo(kind string) (api.KindInfo, error) {
	k, ok := api.LookupKind(kind)
	if !ok {
		return k, fmt.Errorf("unknown kind %q", kind)
	}
	return k, nil
}

// Do sends a request and decodes a 2xx JSON answer into out (if non-nil). A non-2xx answer
// is returned as *api.Status.
func (c *Client) Do(ctx context.Context, method, path string, body any, out any) (http.Header, error) {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.Header, fmt.Errorf("decoding the answer to %s %s: %w", method, path, err)
		}
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	return resp.Header, nil
}

func (c *Client) send(ctx context.Context, method, path string, body any) (*http.Response, error) {
	return c.sendType(ctx, method, path, "application/json", body)
}

// UserAgent names Flotilla's clients; the server takes its first part as the field
// manager of their writes.
const UserAgent = "flotilla"

func (c *Client) sendType(ctx context.Context, method, path, contentType string, body any) (*http.Response, error) {
	var data []byte
	if body != nil {
		switch b := body.(type) {
		case []byte:
			data = b
		default:
			var err error
			if data, err = json.Marshal(body); err != nil {
				return nil, err
			}
		}
	}
	// A replica that cannot be reached is skipped for the next; one that was reached but
	// failed mid-call is left for the next call (the caller decides whether to repeat it).
	for tries := 0; ; tries++ {
		i := c.cur.Load()
		resp, err := c.sendTo(ctx, c.bases[i], method, path, contentType, body != nil, data)
		if err == nil || ctx.Err() != nil {
			return resp, err
		}
		var st *api.Status
		if errors.As(err, &st) {
			return nil, err
		}
		if !c.failedOver(i) || !unreachable(err) || tries+1 >= len(c.bases) {
			return nil, err
		}
	}
}

func (c *Client) sendTo(ctx context.Context, base, method, path, contentType string, hasBody bool, data []byte) (*http.Response, error) {
	var r io.Reader
	if hasBody {
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, r)
	if err != nil {
		return nil, err
	}
	if hasBody {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", UserAgent)
	if t := c.bearer(); t != "" {
		req.Header.Set("Authorization", "Bearer "+t)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	c.noteRenewal(resp.Header)
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, statusFrom(resp)
	}
	return resp, nil
}

func statusFrom(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var st api.Status
	if json.Unmarshal(data, &st) == nil && st.Message != "" {
		if st.Code == 0 {
			st.Code = resp.StatusCode
		}
		return &st
	}
	return &api.Status{Code: resp.StatusCode, Message: fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(data)))}
}

// IsNotFound and friends test API errors.
func IsNotFound(err error) bool { return code(err) == http.StatusNotFound }

// IsConflict reports a 409.
func IsConflict(err error) bool { return code(err) == http.StatusConflict }

func code(err error) int {
	var st *api.Status
	if errors.As(err, &st) {
		return st.Code
	}
	return 0
}

// Get reads one object.
func (c *Client) Get(ctx context.Context, kind, ns, name string) (*api.Object, error) {
	k, err := kindInfo(kind)
	if err != nil {
		return nil, err
	}
	var o api.Object
	_, err = c.Do(ctx, http.MethodGet, Path(k, ns, name), nil, &o)
	return &o, err
}

// ListOptions select a page.
type ListOptions struct {
	Selector string
	Limit    int
	Continue string
}

// List reads one page of objects; ns "" lists all namespaces.
func (c *Client) List(ctx context.Context, kind, ns string, opts ListOptions) (*api.List, error) {
	k, err := kindInfo(kind)
	if err != nil {
		return nil, err
	}
	q := url.Values{}
	if opts.Selector != "" {
		q.Set("labelSelector", opts.Selector)
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Continue != "" {
		q.Set("continue", opts.Continue)
	}
	p := Path(k, ns, "")
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	var l api.List
	_, err = c.Do(ctx, http.MethodGet, p, nil, &l)
	return &l, err
}

// ListAll reads every page.
func (c *Client) ListAll(ctx context.Context, kind, ns, selector string) (*api.List, error) {
	var all *api.List
	opts := ListOptions{Selector: selector, Limit: 1000}
	for {
		l, err := c.List(ctx, kind, ns, opts)
		if err != nil {
			return nil, err
		}
		if all == nil {
			all = l
		} else {
			all.Items = append(all.Items, l.Items...)
		}
		if l.Metadata.Continue == "" {
			all.Metadata.Continue = ""
			return all, nil
		}
		opts.Continue = l.Metadata.Continue
	}
}

// Create creates an object.
func (c *Client) Create(ctx context.Context, obj *api.Object) (*api.Object, error) {
	k, err := kindInfo(obj.Kind)
	if err != nil {
		return nil, err
	}
	var out api.Object
	_, err = c.Do(ctx, http.MethodPost, Path(k, obj.Metadata.Namespace, ""), obj, &out)
	return &out, err
}

// Apply creates or updates an object (one PUT) and says which happened: created,
// configured or unchanged. With dryRun the server validates and changes nothing.
func (c *Client) Apply(ctx context.Context, obj *api.Object, dryRun bool) (*api.Object, string, error) {
	k, err := kindInfo(obj.Kind)
	if err != nil {
		return nil, "", err
	}
	p := Path(k, obj.Metadata.Namespace, obj.Metadata.Name)
	if dryRun {
		p += "?dryRun=All"
	}
	var out api.Object
	h, err := c.Do(ctx, http.MethodPut, p, obj, &out)
	if err != nil {
		return nil, "", err
	}
	return &out, h.Get("X-Flotilla-Result"), nil
}

// Update replaces an object's spec, labels and annotations.
func (c *Client) Update(ctx context.Context, obj *api.Object) (*api.Object, error) {
	out, _, err := c.Apply(ctx, obj, false)
	return out, err
}

// UpdateStatus replaces an object's status.
func (c *Client) UpdateStatus(ctx context.Context, obj *api.Object) (*api.Object, error) {
	k, err := kindInfo(obj.Kind)
	if err != nil {
		return nil, err
	}
	var out api.Object
	_, err = c.Do(ctx, http.MethodPut, Path(k, obj.Metadata.Namespace, obj.Metadata.Name)+"/status", obj, &out)
	return &out, err
}

// Delete deletes an object, at resourceVersion if it is non-empty.
func (c *Client) Delete(ctx context.Context, kind, ns, name, resourceVersion string) (*api.Object, error) {
	k, err := kindInfo(kind)
	if err != nil {
		return nil, err
	}
	p := Path(k, ns, name)
	if resourceVersion != "" {
		p += "?resourceVersion=" + url.QueryEscape(resourceVersion)
	}
	var out api.Object
	_, err = c.Do(ctx, http.MethodDelete, p, nil, &out)
	return &out, err
}

// Watch streams changes after resourceVersion ("" means from now). The channel closes when
// ctx ends or the stream breaks; an ERROR event carries an *api.Status as its object.
func (c *Client) Watch(ctx context.Context, kind, ns, selector, resourceVersion string) (<-chan api.WatchEvent, error) {
	k, err := kindInfo(kind)
	if err != nil {
		return nil, err
	}
	q := url.Values{"watch": {"true"}}
	if selector != "" {
		q.Set("labelSelector", selector)
	}
	if resourceVersion != "" {
		q.Set("resourceVersion", resourceVersion)
	}
	resp, err := c.send(ctx, http.MethodGet, Path(k, ns, "")+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	ch := make(chan api.WatchEvent)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var ev api.WatchEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				return
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// Patch types Patch accepts: Kubernetes' names.
const (
	MergePatch = "application/merge-patch+json"
	JSONPatch  = "application/json-patch+json"
	ApplyPatch = "application/apply-patch+yaml"
)

// Patch changes an object with a merge, JSON or apply patch. An apply patch needs a
// fieldManager, and force takes fields other managers own.
func (c *Client) Patch(ctx context.Context, kind, ns, name, patchType string, patch []byte, fieldManager string, force bool) (*api.Object, error) {
	k, err := kindInfo(kind)
	if err != nil {
		return nil, err
	}
	q := url.Values{}
	if fieldManager != "" {
		q.Set("fieldManager", fieldManager)
	}
	if force {
		q.Set("force", "true")
	}
	p := Path(k, ns, name)
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	resp, err := c.sendType(ctx, http.MethodPatch, p, patchType, patch)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out api.Object
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("decoding the answer to PATCH %s: %w", p, err)
	}
	return &out, nil
}
