package cli

import (
	"fmt"
	"maps"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/internal/bundle"
)

func newRenderCmd(g *globals) *cobra.Command {
	var (
		labelArgs   []string
		clusterName string
		groups      []string
		budget      = bundle.DefaultBudget()
	)
	cmd := &cobra.Command{
		Use:   "render DIR",
		Short: "Print what a cluster with the given labels would receive from a repository directory",
		Long: `Render scans DIR as a GitRepo without paths or targets would be scanned (every fleet.yaml,
raw YAML, Kustomize and Helm bundle) and prints, as multi-document YAML, the objects a cluster
with the given name, labels and groups would receive, each bundle preceded by a comment naming
it and the target that matched. It needs no server; charts from chart repositories are fetched.
The cluster is always in the group "default", as in Fleet. --namespace sets the cluster's
namespace for ${ .ClusterNamespace } templating.`,
		Example: `  flotilla render ./fleet-examples/multi-cluster -l env=prod,region=eu
  flotilla render . --cluster-name edge-7 --cluster-group edge -l env=dev`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := bundle.Cluster{Name: clusterName, Labels: map[string]string{}, Groups: map[string]map[string]string{}, Namespace: g.ns()}
			for _, l := range labelArgs {
				m, err := labels.ConvertSelectorToLabelsMap(l)
				if err != nil {
					return fmt.Errorf("invalid -l %q: want key=value[,key=value…]: %v", l, err)
				}
				maps.Copy(c.Labels, m)
			}
			for _, gr := range groups {
				c.Groups[gr] = map[string]string{}
			}
			if err := checkRenderBudget(budget); err != nil {
				return err
			}
			return bundle.RenderDir(bundle.WithBudget(cmd.Context(), budget), args[0], c, g.out)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&labelArgs, "labels", "l", nil, "the cluster's labels, key=value[,key=value…] (repeatable)")
	f.StringVar(&clusterName, "cluster-name", "", "the cluster's name")
	f.StringArrayVar(&groups, "cluster-group", nil, "a ClusterGroup the cluster is in (repeatable)")
	addRenderBudgetFlags(f, &budget)
	return cmd
}

// addRenderBudgetFlags adds the flags of a render's budget, which the server and `flotilla
// render` share so that a bundle that renders with one renders with the other.
func addRenderBudgetFlags(f *pflag.FlagSet, b *bundle.Budget) {
	f.DurationVar(&b.Time, strings.TrimPrefix(bundle.FlagRenderTimeout, "--"), b.Time, "time one render of a bundle (and one cluster's options) may take")
	f.Int64Var(&b.MaxBytes, strings.TrimPrefix(bundle.FlagRenderMaxBytes, "--"), b.MaxBytes, "bytes one render may read and produce (YAML parsed, template output, files Kustomize reads)")
	f.IntVar(&b.MaxObjects, strings.TrimPrefix(bundle.FlagRenderMaxObjects, "--"), b.MaxObjects, "objects one render may produce, and files and documents Kustomize may read")
}

func checkRenderBudget(b bundle.Budget) error {
	switch {
	case b.Time <= 0:
		return fmt.Errorf("%s must be positive, not %v", bundle.FlagRenderTimeout, b.Time)
	case b.MaxBytes <= 0:
		return fmt.Errorf("%s must be positive, not %d", bundle.FlagRenderMaxBytes, b.MaxBytes)
	case b.MaxObjects <= 0:
		return fmt.Errorf("%s must be positive, not %d", bundle.FlagRenderMaxObjects, b.MaxObjects)
	}
	return nil
}
