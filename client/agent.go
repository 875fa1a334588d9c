package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"flotilla.dev/api"
)

// WithToken returns a client that shares c's connections but sends token.
func (c *Client) WithToken(token string) *Client {
	cp := *c
	cp.cred = newCredential(token)
	return &cp
}

// Register exchanges a registration token for a cluster credential.
func (c *Client) Register(ctx context.Context, registrationToken string, req api.RegisterRequest) (*api.RegisterResponse, error) {
	var out api.RegisterResponse
	if _, err := c.WithToken(registrationToken).Do(ctx, http.MethodPost, api.PathRegister, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Desired asks for the cluster's desired state if it changed after since. It returns nil
// state when nothing changed, and in both cases when to poll next and the revision.
func (c *Client) Desired(ctx context.Context, since int64) (state *api.DesiredState, rev int64, pollAfter time.Duration, err error) {
	return c.WaitDesired(ctx, since, 0)
}

// WaitDesired is Desired as a long poll: the server holds the request for up to wait (at
// most a minute) and answers as soon as the desired state changes.
func (c *Client) WaitDesired(ctx context.Context, since int64, wait time.Duration) (state *api.DesiredState, rev int64, pollAfter time.Duration, err error) {
	i := c.cur.Load()
	// inline=1: the caller gets the archives the server sends with the state (Contents).
	u := c.bases[i] + api.PathDesired + "?since=" + strconv.FormatInt(since, 10) + "&inline=1"
	if s := int(wait.Seconds()); s > 0 {
		u += "&wait=" + strconv.Itoa(s)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.bearer())
	resp, err := c.http.Do(req)
	if err != nil {
		// The agent polls again after its backoff: at the next replica.
		c.failedOver(i)
		return nil, 0, 0, err
	}
	defer resp.Body.Close()
	c.noteRenewal(resp.Header)
	if tok := resp.Header.Get(api.HeaderTunnelToken); tok != "" && c.tunnel != nil {
		c.tunnel(tok)
	}
	pollAfter = time.Duration(atoiOr(resp.Header.Get(api.HeaderPollAfter), 0)) * time.Second
	if c.doorbell != nil && (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusNotModified) {
		port := atoiOr(resp.Header.Get(api.HeaderDoorbell), 0)
		if port < 0 || port > 65535 {
			port = 0
		}
		after := max(0, atoiOr(resp.Header.Get(api.HeaderBellPollAfter), 0))
		c.doorbell(DoorbellAd{Port: port, PollAfter: time.Duration(after) * time.Second})
	}
	switch resp.StatusCode {
	case http.StatusNotModified:
		io.Copy(io.Discard, resp.Body)
		rev, _ = strconv.ParseInt(resp.Header.Get(api.HeaderRevision), 10, 64)
		return nil, rev, pollAfter, nil
	case http.StatusOK:
		var ds api.DesiredState
		if err := json.NewDecoder(io.LimitReader(resp.Body, api.MaxDesiredBytes)).Decode(&ds); err != nil {
			return nil, 0, pollAfter, fmt.Errorf("decoding desired state (of at most %d bytes): %w", api.MaxDesiredBytes, err)
		}
		if ds.PollAfterSeconds > 0 {
			pollAfter = time.Duration(ds.PollAfterSeconds) * time.Second
		}
		return &ds, ds.Revision, pollAfter, nil
	}
	return nil, 0, pollAfter, statusFrom(resp)
}

// Doorbell fetches what the cluster needs to use the server's doorbell: its key and port.
func (c *Client) Doorbell(ctx context.Context) (*api.DoorbellInfo, error) {
	var info api.DoorbellInfo
	if _, err := c.Do(ctx, http.MethodGet, api.PathDoorbell, nil, &info); err != nil {
		return nil, err
	}
	if len(info.Key) < 16 || info.Port <= 0 || info.Port > 65535 {
		return nil, fmt.Errorf("the server's doorbell answer is incomplete (port %d, key of %d bytes)", info.Port, len(info.Key))
	}
	return &info, nil
}

func atoiOr(s string, def int) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return def
	}
	return n
}

// Content fetches a bundle's content archive by digest.
func (c *Client) Content(ctx context.Context, digest string) ([]byte, error) {
	resp, err := c.send(ctx, http.MethodGet, api.PathContent+digest, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	n, err := io.Copy(&b, io.LimitReader(resp.Body, api.MaxContentBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading content %s: %w", digest, err)
	}
	if n > api.MaxContentBytes {
		return nil, fmt.Errorf("content %s is larger than %d bytes", digest, api.MaxContentBytes)
	}
	return b.Bytes(), nil
}

// ReportStatus sends a status report.
func (c *Client) ReportStatus(ctx context.Context, rep api.StatusReport) error {
	_, err := c.Do(ctx, http.MethodPost, api.PathStatus, rep, nil)
	return err
}

// Reason returns the Status reason of an API error, or "".
func Reason(err error) string {
	var st *api.Status
	if errors.As(err, &st) {
		return st.Reason
	}
	return ""
}

// Code returns the HTTP status code of an API error, or 0.
func Code(err error) int { return code(err) }
