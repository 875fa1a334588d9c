package client

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"time"

	"flotilla.dev/api"
)

// Kubeconfig asks for a kubeconfig (YAML) for cluster name through the server's Kubernetes
// proxy, carrying a new API token of the caller valid for ttl (0: the server's maximum).
func (c *Client) Kubeconfig(ctx context.Context, name string, ttl time.Duration) ([]byte, error) {
	p := api.PathKubeconfig + url.PathEscape(name)
	if ttl > 0 {
		p += "?ttl=" + url.QueryEscape(ttl.String())
	}
	resp, err := c.send(ctx, http.MethodPost, p, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}
