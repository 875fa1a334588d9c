// Package bundle owns what a bundle is, which clusters it targets and what it renders to.
//
// A bundle is a directory of a git repository (Fleet's format: raw YAML, Kustomize or a Helm
// chart, customised by a fleet.yaml) turned into Files, a map of paths to bytes, together with
// its parsed fleet.yaml. Scan reads a checkout into bundles and resolves every chart at scan time,
// so content is self-contained: Pack makes one deterministic archive of it, stored once by digest
// and shared by every cluster. Match, Merge and CombineTargets decide which clusters receive a
// bundle and with which options, with Fleet's semantics. Render turns content and options into the
// Kubernetes objects (and, for charts, the Helm release) one cluster receives.
//
// The server, the agent and the CLI all import this package. It must never import git or SQL
// drivers: the edge agent links it.
package bundle
