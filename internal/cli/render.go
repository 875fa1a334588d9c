package cli

import (
	"fmt"
	"maps"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/internal/bundle"
)

func newRenderCmd(g *globals) *cobra.Command {
	var (
		labelArgs   []string
		clusterName string
		groups      []string
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
			return bundle.RenderDir(cmd.Context(), args[0], c, g.out)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&labelArgs, "labels", "l", nil, "the cluster's labels, key=value[,key=value…] (repeatable)")
	f.StringVar(&clusterName, "cluster-name", "", "the cluster's name")
	f.StringArrayVar(&groups, "cluster-group", nil, "a ClusterGroup the cluster is in (repeatable)")
	return cmd
}
