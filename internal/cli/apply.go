package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"flotilla.dev/api"
)

func newApplyCmd(g *globals) *cobra.Command {
	var files []string
	var recursive, dryRun bool
	cmd := &cobra.Command{
		Use:   "apply -f FILE|DIR|-",
		Short: "Create or update objects from YAML or JSON manifests",
		Long: `Create or update objects from manifests (multi-document YAML, JSON, or Lists).

Every object is first validated by the server without changing anything; only when all of
them are valid are they applied, so a bad manifest changes nothing. Fleet's
fleet.cattle.io/v1alpha1 GitRepo, ClusterGroup and Bundle manifests are accepted as they are.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(files) == 0 {
				return fmt.Errorf("apply needs -f FILE, DIR or - for standard input")
			}
			ms, err := readManifests(files, recursive, g.in)
			if err != nil {
				return err
			}
			if len(ms) == 0 {
				return fmt.Errorf("no objects found in %s", strings.Join(files, ", "))
			}
			for _, m := range ms {
				if k, ok := api.LookupKind(m.obj.Kind); ok && k.Global {
					// Users, roles, bindings and projects have no namespace; the server
					// says so if the file gives one.
					continue
				}
				if g.namespace != "" && m.obj.Metadata.Namespace != "" && m.obj.Metadata.Namespace != g.namespace {
					return fmt.Errorf("%s: namespace %q does not match -n %s", m.source, m.obj.Metadata.Namespace, g.namespace)
				}
				if m.obj.Metadata.Namespace == "" {
					m.obj.Metadata.Namespace = g.ns()
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			for _, m := range ms {
				if _, _, err := c.Apply(ctx, m.obj, true); err != nil {
					return fmt.Errorf("%s: %s %s: %w", m.source, m.obj.Kind, m.obj.Metadata.Name, err)
				}
			}
			if dryRun {
				for _, m := range ms {
					fmt.Fprintf(g.out, "%s/%s valid (dry run)\n", strings.ToLower(m.obj.Kind)+"."+api.Group, m.obj.Metadata.Name)
				}
				return nil
			}
			for _, m := range ms {
				_, result, err := c.Apply(ctx, m.obj, false)
				if err != nil {
					return fmt.Errorf("%s: %s %s: %w", m.source, m.obj.Kind, m.obj.Metadata.Name, err)
				}
				fmt.Fprintf(g.out, "%s/%s %s\n", strings.ToLower(m.obj.Kind)+"."+api.Group, m.obj.Metadata.Name, result)
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVarP(&files, "filename", "f", nil, "file, directory or - (standard input)")
	cmd.Flags().BoolVarP(&recursive, "recursive", "R", false, "read directories recursively")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only validate on the server")
	return cmd
}
