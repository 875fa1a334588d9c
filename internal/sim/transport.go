package sim

import (
	"net"
	"net/http"
	"time"

	"flotilla.dev/client"
)

// newTransports returns n HTTP/2 transports, each of which multiplexes its requests over a
// single connection while the server allows that many streams, so that the simulated fleet
// shares n connections however many clusters it holds. MaxConnsPerHost is deliberately not
// set: with HTTP/2 it can leave requests waiting forever (golang/go#34941).
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
