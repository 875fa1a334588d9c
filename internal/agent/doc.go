// Package agent owns the lifecycle of flotilla-agent, the small program that runs in (or
// beside) each downstream cluster: it registers the cluster once, pulls the cluster's desired
// state, fetches bundle content by digest, renders it (internal/bundle), applies it
// (internal/agent/apply), watches for drift, reports status, and keeps doing all of that while
// the server is unreachable.
//
// Everything the agent must survive a restart with lives in its state directory: the
// credential (or, in-cluster, a Secret), the last desired state, a content cache keyed by
// sha256, and the queue of unsent status with the next report sequence number. An agent
// restarted while offline starts from there.
//
// Only cmd/flotilla-agent and tests import this package. It must not import the server's
// store, SQL drivers or git: flotilla-agent is an edge binary, and a dependency test keeps it so.
package agent
