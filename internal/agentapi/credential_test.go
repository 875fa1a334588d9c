package agentapi

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

func TestCredential(t *testing.T) {
	k := &keyRing{key: []byte("0123456789abcdef0123456789abcdef")}
	id := identity{Namespace: "fleet-default", Name: "edge-1", UID: "5f0c7e3a-8d1b-4c1e-9a7e-0b6f3c2d1e4f"}
	cred := k.mint(id)
	if got, err := k.verify(cred); err != nil || got != id {
		t.Fatalf("verify(mint(id)) = %+v, %v; want %+v", got, err, id)
	}

	// Credentials minted before the compact payload carry JSON; they stay valid.
	raw, _ := json.Marshal(id)
	payload := base64.RawURLEncoding.EncodeToString(raw)
	if got, err := k.verify(credentialPrefix + payload + "." + k.mac(payload)); err != nil || got != id {
		t.Errorf("JSON payload: %+v, %v; want %+v", got, err, id)
	}

	sign := func(raw string) string {
		p := base64.RawURLEncoding.EncodeToString([]byte(raw))
		return credentialPrefix + p + "." + k.mac(p)
	}
	other := &keyRing{key: []byte("another key, another server.....")}
	payload, _, _ = strings.Cut(strings.TrimPrefix(cred, credentialPrefix), ".")
	for name, bad := range map[string]string{
		"empty":              "",
		"no prefix":          strings.TrimPrefix(cred, credentialPrefix),
		"no signature":       credentialPrefix + payload,
		"another key":        other.mint(id),
		"payload changed":    credentialPrefix + base64.RawURLEncoding.EncodeToString([]byte("fleet-default\x00edge-2\x00"+id.UID)) + "." + k.mac(payload),
		"signature changed":  cred[:len(cred)-2] + "AA",
		"two fields":         sign("fleet-default\x00edge-1"),
		"four fields":        sign("a\x00b\x00c\x00d"),
		"no name":            sign("fleet-default\x00\x00uid"),
		"no uid":             sign("fleet-default\x00edge-1\x00"),
		"empty payload":      sign(""),
		"malformed json":     sign(`{"n":"x"`),
		"json without a uid": sign(`{"n":"fleet-default","c":"edge-1"}`),
	} {
		if got, err := k.verify(bad); err == nil {
			t.Errorf("%s: verify accepted %q as %+v", name, bad, got)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	k := &keyRing{key: []byte("0123456789abcdef0123456789abcdef")}
	cred := k.mint(identity{Namespace: "fleet-default", Name: "edge-1", UID: "5f0c7e3a-8d1b-4c1e-9a7e-0b6f3c2d1e4f"})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.verify(cred); err != nil {
			b.Fatal(err)
		}
	}
}
