// Package gitops owns the GitRepo controller: it keeps a local clone of every GitRepo's
// repository under the server's data directory, fetches it incrementally on a polling interval
// or when a push webhook arrives, and turns each new commit into Bundles (through package
// bundle: Fleet's fleet.yaml, raw YAML, Kustomize, Helm), which it writes to the store with
// their content stored once by digest. It deletes the Bundles a GitRepo no longer produces and
// reports the commit deployed, the bundles and any error on the GitRepo's status. A commit
// that cannot be turned into bundles changes nothing that is deployed.
//
// Only the server imports this package: it links go-git, which the edge agent must not.
package gitops
