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
