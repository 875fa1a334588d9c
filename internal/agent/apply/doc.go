// Package apply is the agent's apply engine: it owns everything the agent does
// to the Kubernetes API of its own cluster on behalf of a deployment (one
// bundle's desired state on this cluster).
//
// For every bundle it server-side applies the objects with the agent's field
// manager, remembers what it applied in an inventory ConfigMap (one per
// deployment, in the flotilla-system namespace) so that objects dropped from a
// deployment are pruned exactly, and deletes everything on Remove.
//
// Helm bundles are real Helm releases, so that `helm list`, `helm history`,
// `helm upgrade` and `helm uninstall` work on them, but the engine installs
// them itself rather than with the Helm SDK's action package: it renders the
// chart with Helm's engine (real capabilities, lookup, hooks split out), runs
// the bundle's post-renderer, applies the objects like any others (same drift
// detection, inventory and pruning), runs the chart's hooks around them, and
// writes each revision in Helm's Secret layout (helmstore.go). The SDK's
// action and storage packages would link Helm's SQL release driver, and with
// it lib/pq, sqlx, gorp and sql-migrate, into an edge binary that never uses
// a database.
//
// Status reads the live objects back: readiness comes from kstatus, and drift
// ("modified") from a dry-run server-side apply of the desired object compared
// with the live one — the API server then does the defaulting, conversion and
// field ownership for us, so only a real difference counts. Watch turns changes
// of applied objects into notifications within a second, so the agent need
// not poll to notice an edit.
//
// Only the agent imports this package. It must not import SQL drivers, git,
// Helm's action or storage packages, or any server package: the agent is a
// small edge binary (deps_test.go checks).
package apply
