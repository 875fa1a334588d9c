// Package apply is the agent's apply engine: it owns everything the agent does
// to the Kubernetes API of its own cluster on behalf of a deployment (one
// bundle's desired state on this cluster).
//
// For raw and Kustomize bundles it server-side applies the objects with the
// agent's field manager, remembers what it applied in an inventory ConfigMap
// (one per deployment, in the flotilla-system namespace) so that objects
// dropped from a deployment are pruned exactly, and deletes everything on
// Remove. For Helm bundles it installs and upgrades a real Helm release with
// the Helm SDK, so that `helm list` shows it.
//
// Status reads the live objects back: readiness comes from kstatus, and drift
// ("modified") from a dry-run server-side apply of the desired object compared
// with the live one — the API server then does the defaulting, conversion and
// field ownership for us, so only a real difference counts. Watch turns changes
// of applied objects into notifications within a second, so the agent need
// not poll to notice an edit.
//
// Only the agent imports this package. It must not import SQL drivers of its
// own, git, or any server package: the agent is a small edge binary.
// (Helm's action package links a PostgreSQL driver for its optional SQL
// release storage; that is Helm's, and unused here.)
package apply
