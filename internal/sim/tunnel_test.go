package sim

import (
	"strings"
	"testing"
)

func TestTunnelConfig(t *testing.T) {
	for _, c := range []struct {
		max, keep int
		err       string
	}{{-1, 0, "negative"}, {0, -1, "negative"}, {2, 5, "at most 2 tunnels"}, {0, 0, ""}, {5, 5, ""}} {
		cfg := DefaultConfig()
		cfg.Server, cfg.CAChecksum, cfg.Clusters = "https://127.0.0.1:1", strings.Repeat("0", 64), 10
		cfg.MaxTunnels, cfg.Tunnels = c.max, c.keep
		s, err := New(cfg)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("max %d keep %d: %v", c.max, c.keep, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("max %d keep %d: %v, want an error saying %q", c.max, c.keep, err, c.err)
		case err == nil && (s.tun != nil) != (c.max > 0):
			t.Errorf("max %d: tunnels set up %v", c.max, s.tun != nil)
		}
	}
}
