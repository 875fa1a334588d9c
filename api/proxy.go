package api

// PathK8sClusters starts every cluster's Kubernetes API endpoint on the server:
// PathK8sClusters + NAME + "/api/v1/pods" reaches cluster NAME (of DefaultNamespace) through
// its agent's tunnel, as the caller.
const PathK8sClusters = "/k8s/clusters/"
