// Package sim is the load simulator behind `flotilla sim`: N simulated clusters, each with
// its own identity and credential, making exactly the calls a real agent makes (register,
// poll desired state honouring the server's poll-after, fetch content by digest, report
// status and heartbeats) over a bounded pool of HTTP/2 connections, with no Kubernetes
// underneath. It is how Flotilla's scale is measured (DESIGN.md §7).
//
// Simulated clusters are not goroutines: each is a small record, and a scheduler (a heap of
// next-wake times) hands due clusters to a fixed pool of workers, so a million of them fit in
// a few hundred megabytes and the simulator's own cost stays well below the server's.
//
// A simulated cluster the server asks for its tunnel opens it with the agent's own code
// (tunnel.Agent) and serves a small Kubernetes-like API behind it (NewKubeAPI), so that the
// server's Kubernetes proxy and its tunnels can be measured at scale (OpenTunnels).
//
// The package also measures what the figures are compared with: a bare HTTPS request to a
// trivial handler on the same machine, with the same connection settings (Baseline).
//
// Imported by the CLI and by the end-to-end tests; the server and agent never import it.
package sim
