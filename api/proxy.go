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

// PathKubeconfig: POST PathKubeconfig + NAME [?ttl=8h] answers a kubeconfig (YAML) for cluster
// NAME through PathK8sClusters, with the server's CA and a new API token of the caller valid
// for ttl (default the server's maximum). Refused, like the proxy, to a caller who may not
// reach the cluster.
const PathKubeconfig = "/v1/kubeconfig/"
