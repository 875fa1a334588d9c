package client_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"flotilla.dev/client"
	"flotilla.dev/internal/pki"
)

// An agent that closes its connection between polls resumes its TLS session on the next,
// with the CA pinned by checksum, so the server does not sign a new handshake per poll.
func TestReconnectResumesSession(t *testing.T) {
	b, err := pki.Ensure(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cert := b.Cert
	if ca, err := pki.DER(b.CAPEM); err == nil {
		cert.Certificate = append(cert.Certificate[:1:1], ca)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()

	tc, err := client.TLSConfig(nil, b.Checksum, false)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}
	hc := &http.Client{Transport: tr}
	for i := range 3 {
		resp, err := hc.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.TLS == nil || resp.TLS.DidResume != (i > 0) {
			t.Errorf("request %d: resumed %v, want %v", i, resp.TLS != nil && resp.TLS.DidResume, i > 0)
		}
		tr.CloseIdleConnections()
	}

	// A server with another CA is refused, also on a connection that could resume.
	other, err := pki.Ensure(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	tc2, _ := client.TLSConfig(nil, other.Checksum, false)
	if _, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: tc2}}).Get(srv.URL); err == nil {
		t.Error("a server whose CA does not match the pinned checksum was accepted")
	}
}
