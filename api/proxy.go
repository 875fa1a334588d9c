package api

// PathK8sClusters starts every cluster's Kubernetes API endpoint on the server:
// PathK8sClusters + NAME + "/api/v1/pods" reaches cluster NAME (of DefaultNamespace) through
// its agent's tunnel, as the caller.
const PathK8sClusters = "/k8s/clusters/"

// LabelTunnel on a Cluster, with the value TunnelAlways, keeps the cluster's agent tunnel
// open: the server asks for it at every poll, and neither end closes it when idle (clusters
// in a data centre, reached often).
const (
	LabelTunnel  = "flotilla.dev/tunnel"
	TunnelAlways = "always"
)
