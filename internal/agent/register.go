package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// register returns the cluster's credentials: the stored ones, or new ones for which it
// exchanges the registration token. The token is never sent once a credential exists for
// this cluster and server.
func (a *agent) register(ctx context.Context) (*credentials, error) {
	clientID, err := retry(ctx, a, "reading the cluster's identity", func(ctx context.Context) (string, error) {
		id, err := a.cluster.ClientID(ctx)
		return id, err
	}, func(error) bool { return true })
	if err != nil {
		return nil, err
	}
	c, err := a.creds.load(ctx)
	if err != nil {
		return nil, err
	}
	if c != nil {
		why := ""
		switch {
		case c.ClientID != "" && c.ClientID != clientID:
			why = "the stored credential belongs to another cluster (kube-system namespace UID " + c.ClientID + ")"
		case a.cfg.Server != "" && !sameServer(a.cfg.Server, c.Server):
			why = "the stored credential is for the server " + c.Server
		}
		if why == "" {
			if a.cfg.ClusterName != "" && c.ClusterName != "" && a.cfg.ClusterName != c.ClusterName {
				// Registering again under the new name would leave the old Cluster behind
				// with this cluster's deployments.
				a.log.Warn("--cluster-name is ignored: this cluster is already registered under another name; "+
					"to rename it, delete the Cluster on the server and register again with a new token",
					"registeredAs", c.Namespace+"/"+c.ClusterName, "clusterName", a.cfg.ClusterName)
			}
			return a.refreshCA(ctx, c)
		}
		if a.cfg.Token == "" {
			return nil, fmt.Errorf("%s, and there is no registration token to register with %s", why, a.cfg.Server)
		}
		a.log.Warn("registering again; forgetting the desired state and status kept for the old registration", "why", why)
		// What the old registration asked of the cluster must not be applied before the
		// new server says what it wants, and what was reported to the old one is news to
		// the new one. Cached content is addressed by digest and stays valid.
		if err := a.dir.forgetRegistration(); err != nil {
			return nil, err
		}
	}
	if a.cfg.Token == "" || a.cfg.Server == "" {
		return nil, ErrNotRegistered
	}

	var ca []byte
	if strings.HasPrefix(a.cfg.Server, "https:") && a.cfg.CAChecksum != "" {
		ca, err = retry(ctx, a, "fetching the server's CA", func(ctx context.Context) ([]byte, error) {
			return client.FetchCA(ctx, a.cfg.Server, a.cfg.CAChecksum)
		}, func(err error) bool {
			// A CA that does not match the pin will not start matching.
			return !strings.Contains(err.Error(), "checksum")
		})
		if err != nil {
			return nil, err
		}
	}
	cl, err := client.New(client.Config{Server: a.cfg.Server, CAData: ca})
	if err != nil {
		return nil, err
	}
	inv, err := a.cluster.Inventory(ctx)
	if err != nil {
		a.log.Warn("reading the cluster's inventory", "err", err)
		inv = nil
	}
	req := api.RegisterRequest{ClientID: clientID, ClusterName: a.cfg.ClusterName, Labels: a.cfg.Labels, Inventory: inv}
	resp, err := retry(ctx, a, "registering", func(ctx context.Context) (*api.RegisterResponse, error) {
		return cl.Register(ctx, a.cfg.Token, req)
	}, transient)
	if err != nil {
		switch client.Code(err) {
		case http.StatusUnauthorized, http.StatusForbidden:
			return nil, fmt.Errorf("%w: %v", ErrTokenInvalid, err)
		case http.StatusConflict, http.StatusBadRequest:
			if a.cfg.ClusterName != "" {
				return nil, fmt.Errorf("%w: %v", ErrClusterNameRefused, err)
			}
		}
		return nil, fmt.Errorf("registering with %s: %w", a.cfg.Server, err)
	}
	if resp.Credential == "" {
		return nil, errors.New("registering: the server returned no credential")
	}
	c = &credentials{
		Server:      strings.TrimRight(a.cfg.Server, "/"),
		CA:          string(ca),
		Credential:  resp.Credential,
		ClientID:    clientID,
		ClusterName: resp.ClusterName,
		Namespace:   resp.Namespace,
		TokenDigest: tokenDigest(a.cfg.Token),
	}
	c.setExpiry(resp.Expires, a.now())
	// The token may have been good for this one use: losing the credential now would leave
	// the cluster unable to register again, so keep trying to store it.
	if _, err := retry(ctx, a, "storing the credential", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, a.creds.save(ctx, c)
	}, func(error) bool { return true }); err != nil {
		return nil, err
	}
	a.log.Info("registered", "cluster", resp.Namespace+"/"+resp.ClusterName, "server", c.Server)
	if a.cfg.ClusterName != "" && resp.ClusterName != a.cfg.ClusterName {
		// A server from before --cluster-name ignores the name asked for.
		a.log.Warn("the server registered the cluster under another name than --cluster-name: it does not support choosing the name",
			"registeredAs", resp.Namespace+"/"+resp.ClusterName, "clusterName", a.cfg.ClusterName)
	}
	return c, nil
}

// refreshCA fetches the server's CA again when the configured checksum no longer matches
// the stored CA: the operator rotated the CA and gave the agent the new checksum.
func (a *agent) refreshCA(ctx context.Context, c *credentials) (*credentials, error) {
	want := strings.ToLower(strings.TrimPrefix(a.cfg.CAChecksum, "sha256:"))
	if want == "" || c.CA == "" || client.ChecksumPEM([]byte(c.CA)) == want {
		if a.cfg.Token != "" {
			a.log.Debug("already registered; the registration token is not used")
		}
		return c, nil
	}
	ca, err := retry(ctx, a, "fetching the server's CA", func(ctx context.Context) ([]byte, error) {
		return client.FetchCA(ctx, c.Server, want)
	}, func(err error) bool { return !strings.Contains(err.Error(), "checksum") })
	if err != nil {
		return nil, err
	}
	c.CA = string(ca)
	if err := a.creds.save(ctx, c); err != nil {
		return nil, err
	}
	a.log.Info("stored the server's new CA")
	return c, nil
}

// retry calls f until it succeeds, fails in a way retryable says is not worth retrying, or
// ctx ends, backing off between attempts.
func retry[T any](ctx context.Context, a *agent, what string, f func(context.Context) (T, error), retryable func(error) bool) (T, error) {
	bo := newBackoff(a.cfg.MinBackoff, a.cfg.MaxBackoff)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		v, err := f(cctx)
		cancel()
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return v, err
		}
		wait := bo.next()
		a.log.Warn(what+" failed; retrying", "err", err, "in", wait.Round(time.Millisecond))
		if !sleep(ctx, wait) {
			return v, ctx.Err()
		}
	}
}

// sameServer compares server URLs loosely: scheme, host and path, without a trailing slash.
func sameServer(a, b string) bool {
	// Lists of replicas' URLs: the same replicas in the same order.
	as, bs := strings.Split(a, ","), strings.Split(b, ",")
	if len(as) != len(bs) {
		return false
	}
	for i := range as {
		if !sameURL(strings.TrimSpace(as[i]), strings.TrimSpace(bs[i])) {
			return false
		}
	}
	return true
}

func sameURL(a, b string) bool {
	ua, err1 := url.Parse(strings.TrimRight(a, "/"))
	ub, err2 := url.Parse(strings.TrimRight(b, "/"))
	if err1 != nil || err2 != nil {
		return a == b
	}
	return strings.EqualFold(ua.Scheme, ub.Scheme) && strings.EqualFold(ua.Host, ub.Host) && ua.Path == ub.Path
}
