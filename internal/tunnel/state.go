package tunnel

import "time"

// States of a cluster's tunnel, as State reports them.
const (
	StateOpen      = "open"
	StateKept      = "kept"
	StateRequested = "requested"
)

// Active reports whether any cluster has a tunnel open or requested, so that readers of
// every cluster can skip asking State when none has.
func (s *Server) Active() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.open) > 0 || len(s.wanted) > 0
}

// State is cluster's tunnel: StateOpen, StateKept (open and kept while idle), StateRequested
// (wanted, waiting for the agent to dial in) or "" when there is none.
func (s *Server) State(cluster string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.open[cluster]; t != nil {
		if t.always.Load() {
			return StateKept
		}
		return StateOpen
	}
	if w := s.wanted[cluster]; w != nil && time.Now().Before(w.expires) {
		return StateRequested
	}
	return ""
}

// Close closes cluster's tunnel, if one is open, and forgets a token made for it: the
// cluster was deleted, or its Cluster given to a rebuilt cluster, and no call may reach it
// through a tunnel its old agent opened. Whoever waits for the tunnel is woken, and asks
// again.
func (s *Server) Close(cluster string) {
	s.mu.Lock()
	t := s.open[cluster]
	delete(s.open, cluster)
	if w := s.wanted[cluster]; w != nil {
		delete(s.wanted, cluster)
		close(w.ready)
	}
	s.mu.Unlock()
	if t != nil {
		// Closing waits for the WebSocket's closing handshake: not under the caller's locks.
		go t.sess.Close()
	}
}
