package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"flotilla.dev/api"
)

// ListAPITokens lists the server's API tokens (admins only).
func (c *Client) ListAPITokens(ctx context.Context) ([]api.APIToken, error) {
	var out api.APITokenList
	if _, err := c.Do(ctx, http.MethodGet, api.PathTokens, nil, &out); err != nil {
		return nil, err
	}
	return out.Items, nil
}

// RevokeAPIToken revokes the API token with id; it stops working at once.
func (c *Client) RevokeAPIToken(ctx context.Context, id string) (*api.APIToken, error) {
	var out api.APIToken
	if _, err := c.Do(ctx, http.MethodDelete, api.PathTokens+"/"+url.PathEscape(id), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RenewCredential exchanges the client's cluster credential (valid, or expired within the
// server's grace) for a fresh one.
func (c *Client) RenewCredential(ctx context.Context) (*api.RegisterResponse, error) {
	var out api.RegisterResponse
	if _, err := c.Do(ctx, http.MethodPost, api.PathRenew, struct{}{}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RotateKeys makes the server rotate its cluster-credential and Secret keys (admins only).
func (c *Client) RotateKeys(ctx context.Context) (*api.KeyRotation, error) {
	var out api.KeyRotation
	if _, err := c.Do(ctx, http.MethodPost, api.PathRotateKeys, struct{}{}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateAPIToken makes an API token for the caller; its value is in the answer, once.
func (c *Client) CreateAPIToken(ctx context.Context, req api.CreateTokenRequest) (*api.CreatedToken, error) {
	var out api.CreatedToken
	if _, err := c.Do(ctx, http.MethodPost, api.PathTokens, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AuditQuery selects audit records; zero fields select everything.
type AuditQuery struct {
	User, Verb, Kind, Result string
	// Since and Until are RFC 3339 times or durations before now (1h).
	Since, Until string
	Limit        int
	Continue     string
}

// Audit returns one page of the audit log (admins only). A page may be short, even empty,
// while Continue is set.
func (c *Client) Audit(ctx context.Context, q AuditQuery) (*api.AuditRecordList, error) {
	v := url.Values{}
	for k, s := range map[string]string{"user": q.User, "verb": q.Verb, "kind": q.Kind, "result": q.Result,
		"since": q.Since, "until": q.Until, "continue": q.Continue} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	path := api.PathAudit
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out api.AuditRecordList
	if _, err := c.Do(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Login logs in with a user name and password; the answer holds a session token.
func (c *Client) Login(ctx context.Context, req api.LoginRequest) (*api.LoginResponse, error) {
	var out api.LoginResponse
	if _, err := c.Do(ctx, http.MethodPost, api.PathLogin, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// WhoAmI returns who the server takes the client's token for.
func (c *Client) WhoAmI(ctx context.Context) (*api.WhoAmI, error) {
	var out api.WhoAmI
	if _, err := c.Do(ctx, http.MethodGet, api.PathWhoAmI, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// SetPassword sets a local user's password.
func (c *Client) SetPassword(ctx context.Context, user string, req api.SetPasswordRequest) error {
	_, err := c.Do(ctx, http.MethodPut, api.PathUserPassword+"/"+url.PathEscape(user)+"/password", req, nil)
	return err
}
