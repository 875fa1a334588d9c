package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// objectName is how commands name an object in their output: gitrepo.flotilla.dev/apps.
func objectName(kind, name string) string {
	return strings.ToLower(kind) + "." + api.Group + "/" + name
}

func lookupKind(s string) (api.KindInfo, error) {
	k, ok := api.LookupKind(s)
	if !ok {
		return k, fmt.Errorf("unknown kind %q: Flotilla serves %s", s, kindList())
	}
	return k, nil
}

// newMetaCmd builds `label` and `annotate`: KEY=VALUE sets, KEY- removes. Changing an
// existing value needs --overwrite, as in kubectl.
func newMetaCmd(g *globals, use, field string) *cobra.Command {
	var overwrite bool
	cmd := &cobra.Command{
		Use:   use + " KIND NAME KEY=VALUE... KEY-...",
		Short: "Set or remove the " + field + " of an object",
		Example: fmt.Sprintf(`  flotilla %[1]s cluster edge-1 env=prod
  flotilla %[1]s cluster edge-1 env=staging --overwrite
  flotilla %[1]s gitrepo apps team-`, use),
		Args: cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, err := lookupKind(args[0])
			if err != nil {
				return err
			}
			set := map[string]string{}
			var remove []string
			for _, a := range args[2:] {
				if k, ok := strings.CutSuffix(a, "-"); ok && !strings.Contains(a, "=") {
					remove = append(remove, k)
					continue
				}
				k, v, ok := strings.Cut(a, "=")
				if !ok || k == "" {
					return fmt.Errorf("invalid argument %q: want KEY=VALUE or KEY-", a)
				}
				if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
					return fmt.Errorf("invalid key %q: %s", k, strings.Join(msgs, "; "))
				}
				if field == "labels" {
					if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
						return fmt.Errorf("invalid value %q for %s: %s", v, k, strings.Join(msgs, "; "))
					}
				}
				set[k] = v
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			cur, err := c.Get(ctx, kind.Kind, g.ns(), args[1])
			if err != nil {
				return err
			}
			have := cur.Metadata.Labels
			if field == "annotations" {
				have = cur.Metadata.Annotations
			}
			changes := map[string]any{}
			for k, v := range set {
				if old, ok := have[k]; ok && old != v && !overwrite {
					return fmt.Errorf("%s already has %s %s=%s: pass --overwrite to change it", objectName(kind.Kind, args[1]), strings.TrimSuffix(field, "s"), k, old)
				}
				changes[k] = v
			}
			for _, k := range remove {
				if _, ok := have[k]; !ok {
					return fmt.Errorf("%s has no %s %q", objectName(kind.Kind, args[1]), strings.TrimSuffix(field, "s"), k)
				}
				changes[k] = nil
			}
			// The patch carries the resourceVersion read, so a concurrent change is a
			// conflict rather than lost.
			patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{field: changes, "resourceVersion": cur.Metadata.ResourceVersion}})
			if _, err := c.Patch(ctx, kind.Kind, g.ns(), args[1], client.MergePatch, patch, "", false); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "%s %s\n", objectName(kind.Kind, args[1]), map[string]string{"labels": "labeled", "annotations": "annotated"}[field])
			return nil
		},
	}
	cmd.Flags().BoolVar(&overwrite, "overwrite", false, "allow changing existing values")
	return cmd
}

func newPatchCmd(g *globals) *cobra.Command {
	var patch, patchFile, patchType, fieldManager string
	var force bool
	cmd := &cobra.Command{
		Use:   "patch KIND NAME (-p PATCH | --patch-file FILE)",
		Short: "Change fields of an object with a merge, JSON or apply patch",
		Example: `  flotilla patch gitrepo apps -p '{"spec":{"paused":true}}'
  flotilla patch gitrepo apps --type json -p '[{"op":"replace","path":"/spec/branch","value":"main"}]'
  flotilla patch gitrepo apps --type apply --patch-file apps.yaml`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, err := lookupKind(args[0])
			if err != nil {
				return err
			}
			var ct string
			switch patchType {
			case "merge":
				ct = client.MergePatch
			case "json":
				ct = client.JSONPatch
			case "apply":
				ct = client.ApplyPatch
			default:
				return fmt.Errorf("unknown patch type %q: use merge, json or apply", patchType)
			}
			var body []byte
			switch {
			case patch != "" && patchFile != "":
				return fmt.Errorf("give -p or --patch-file, not both")
			case patch != "":
				body = []byte(patch)
			case patchFile != "":
				if body, err = os.ReadFile(patchFile); err != nil {
					return err
				}
			default:
				return fmt.Errorf("patch needs -p PATCH or --patch-file FILE")
			}
			if ct != client.ApplyPatch {
				// Merge and JSON patches are JSON; YAML is accepted and converted.
				if body, err = yaml.YAMLToJSON(body); err != nil {
					return fmt.Errorf("the patch is neither JSON nor YAML: %w", err)
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if _, err := c.Patch(cmd.Context(), kind.Kind, g.ns(), args[1], ct, body, fieldManager, force); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "%s patched\n", objectName(kind.Kind, args[1]))
			return nil
		},
	}
	cmd.Flags().StringVarP(&patch, "patch", "p", "", "the patch, JSON or YAML")
	cmd.Flags().StringVar(&patchFile, "patch-file", "", "a file holding the patch")
	cmd.Flags().StringVar(&patchType, "type", "merge", "merge (RFC 7386), json (RFC 6902) or apply (server-side apply)")
	cmd.Flags().StringVar(&fieldManager, "field-manager", "flotilla", "the name changes are recorded under (server-side apply)")
	cmd.Flags().BoolVar(&force, "force-conflicts", false, "with --type apply, take fields other managers own")
	return cmd
}

func newEditCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "edit KIND NAME",
		Short: "Edit an object in your editor and save it back",
		Long: `Edit an object as YAML in $FLOTILLA_EDITOR, $KUBE_EDITOR or $EDITOR (default vi) and save it.

Status and the server's metadata are shown but not saved. A Secret's values are shown
redacted; leave them so to keep them, or replace them. If someone else changed the object
in the meantime, nothing is saved and the command says so.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, err := lookupKind(args[0])
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			cur, err := c.Get(ctx, kind.Kind, g.ns(), args[1])
			if err != nil {
				return err
			}
			cur.Metadata.ManagedFields = nil
			before, err := yaml.Marshal(cur)
			if err != nil {
				return err
			}
			dir, err := os.MkdirTemp("", "flotilla-edit-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			file := filepath.Join(dir, strings.ToLower(kind.Kind)+"-"+args[1]+".yaml")
			if err := os.WriteFile(file, before, 0o600); err != nil {
				return err
			}
			if err := runEditor(g, file); err != nil {
				return err
			}
			after, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			if bytes.Equal(bytes.TrimSpace(stripComments(after)), bytes.TrimSpace(stripComments(before))) {
				fmt.Fprintln(g.out, "Edit cancelled, no changes made.")
				return nil
			}
			ms, err := parseManifests(file, bytes.NewReader(after))
			if err != nil {
				return fmt.Errorf("the edited object is not valid (your copy is discarded): %w", err)
			}
			if len(ms) != 1 || ms[0].obj.Kind != cur.Kind || ms[0].obj.Metadata.Name != cur.Metadata.Name {
				return fmt.Errorf("the edited file must hold the one %s %s", cur.Kind, cur.Metadata.Name)
			}
			obj := ms[0].obj
			// Saved only over the version that was edited.
			obj.Metadata.ResourceVersion = cur.Metadata.ResourceVersion
			obj.Metadata.Namespace = cur.Metadata.Namespace
			_, result, err := c.Apply(ctx, obj, false)
			if err != nil {
				return err
			}
			if result == "unchanged" {
				fmt.Fprintf(g.out, "%s unchanged\n", objectName(kind.Kind, args[1]))
				return nil
			}
			fmt.Fprintf(g.out, "%s edited\n", objectName(kind.Kind, args[1]))
			return nil
		},
	}
}

func runEditor(g *globals, file string) error {
	editor := first(os.Getenv("FLOTILLA_EDITOR"), os.Getenv("KUBE_EDITOR"), os.Getenv("EDITOR"), "vi")
	// The editor may carry arguments ("code --wait"), as kubectl allows.
	parts := strings.Fields(editor)
	cmd := exec.Command(parts[0], append(parts[1:], file)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = g.in, g.out, g.errOut
	if f, ok := g.in.(*os.File); ok {
		cmd.Stdin = f
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("running the editor %q: %w", editor, err)
	}
	return nil
}
