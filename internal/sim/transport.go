package sim

import (
	"net"
	"net/http"
	"time"

	"flotilla.dev/client"
)

// newTransports returns n HTTP/2 transports that each keep a single connection to the
// server, so that the simulated fleet shares exactly n connections however many clusters it
// holds, as agents behind a few NAT gateways would look to the server's TLS stack.
func newTransports(caPEM []byte, checksum string, n int) ([]*http.Transport, error) {
	tc, err := client.TLSConfig(caPEM, checksum, false)
	if err != nil {
		return nil, err
	}
	out := make([]*http.Transport, n)
	for i := range out {
		out[i] = &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:     tc.Clone(),
			TLSHandshakeTimeout: 10 * time.Second,
			ForceAttemptHTTP2:   true,
			MaxConnsPerHost:     1,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     5 * time.Minute,
		}
	}
	return out, nil
}

func closeTransports(ts []*http.Transport) {
	for _, t := range ts {
		t.CloseIdleConnections()
	}
}
