package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"flotilla.dev/api"
)

func newDeleteCmd(g *globals) *cobra.Command {
	var files []string
	var recursive bool
	cmd := &cobra.Command{
		Use:   "delete (KIND NAME... | -f FILE|DIR|-)",
		Short: "Delete objects by name or by the manifests that made them",
		RunE: func(cmd *cobra.Command, args []string) error {
			type target struct{ kind, ns, name string }
			var targets []target
			switch {
			case len(files) > 0:
				if len(args) > 0 {
					return fmt.Errorf("give names or -f, not both")
				}
				ms, err := readManifests(files, recursive, g.in)
				if err != nil {
					return err
				}
				for _, m := range ms {
					targets = append(targets, target{m.obj.Kind, first(m.obj.Metadata.Namespace, g.ns()), m.obj.Metadata.Name})
				}
			case len(args) >= 2:
				kind, ok := api.LookupKind(args[0])
				if !ok {
					return fmt.Errorf("unknown kind %q: Flotilla serves %s", args[0], kindList())
				}
				for _, n := range args[1:] {
					targets = append(targets, target{kind.Kind, g.ns(), n})
				}
			default:
				return fmt.Errorf("delete needs KIND NAME... or -f FILE")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			for _, t := range targets {
				if _, err := c.Delete(cmd.Context(), t.kind, t.ns, t.name, ""); err != nil {
					return err
				}
				fmt.Fprintf(g.out, "%s/%s deleted\n", strings.ToLower(t.kind)+"."+api.Group, t.name)
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVarP(&files, "filename", "f", nil, "file, directory or - (standard input)")
	cmd.Flags().BoolVarP(&recursive, "recursive", "R", false, "read directories recursively")
	return cmd
}
