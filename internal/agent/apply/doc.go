// Package apply is the agent's apply engine: it owns everything the agent does
// to the Kubernetes API of its own cluster on behalf of a deployment (one
// bundle's desired state on this cluster).
//
// For every bundle it server-side applies the objects with the agent's field
// manager, remembers what it applied in an inventory ConfigMap (one per
// deployment, in the flotilla-system namespace) so that objects dropped from a
// deployment are pruned exactly, and deletes everything on Remove.
//
// Helm bundles are installed, upgraded, rolled back (atomic) and uninstalled with
// Helm v4's SDK (pkg/action, releases in Helm's Secret storage, server-side apply with
// the agent's field manager), so they are ordinary Helm releases that `helm list`,
// `helm history`, `helm upgrade` and `helm uninstall` work on, with Helm's own hooks,
// CRDs, waits and history limits. The bundle's post-renderer (its Kustomize and
// namespace rules) runs as Helm's post-renderer, followed by the stamps of the
// deployment's label. Afterwards the release's objects go into the inventory like any
// others, so drift detection, comparePatches, readiness and pruning treat them alike.
//
// Status reads the live objects back: readiness comes from kstatus, and drift
// ("modified") from a dry-run server-side apply of the desired object compared
// with the live one — the API server then does the defaulting, conversion and
// field ownership for us, so only a real difference counts. Watch turns changes
// of applied objects into notifications within a second, so the agent need
// not poll to notice an edit.
//
// Only the agent imports this package. It must not import the server's store or
// SQL drivers, git, or any server package: the agent is an edge binary
// (deps_test.go checks).
package apply
