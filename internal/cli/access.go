package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla.dev/api"
)

// exitCode ends the command with a status and nothing printed: the command said what it had
// to (can-i's "no").
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func newRoleBindingCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "rolebinding", Aliases: []string{"rb"}, Short: "Grant roles to users and groups"}
	var role, user, group, workspace, selector, clusterGroup, cluster, project string
	var global, dryRun bool
	create := &cobra.Command{
		Use:   "create NAME --role ROLE (--user U | --group G) (--global | --workspace W | --cluster-selector SEL | --cluster-group G | --cluster C | --project P)",
		Short: "Bind a user or group to a role at one scope",
		Example: `  flotilla rolebinding create alice-dev --role cluster-member --user alice --cluster-selector env=dev
  flotilla rolebinding create sre-admin --role admin --group sre --global
  flotilla rolebinding create web-team --role project-member --group web --project web`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec := api.RoleBindingSpec{RoleRef: role}
			switch {
			case user != "" && group != "":
				return errors.New("give --user or --group, not both")
			case user != "":
				spec.Subject = api.Subject{Kind: api.SubjectUser, Name: user}
			case group != "":
				spec.Subject = api.Subject{Kind: api.SubjectGroup, Name: group}
			default:
				return errors.New("a binding needs --user or --group")
			}
			if role == "" {
				return errors.New("a binding needs --role")
			}
			n := 0
			for _, set := range []bool{global, selector != "", clusterGroup != "", cluster != "", project != ""} {
				if set {
					n++
				}
			}
			if n == 0 && workspace == "" || n > 1 {
				return errors.New("give exactly one scope: --global, --workspace, --cluster-selector, --cluster-group, --cluster or --project (--workspace may narrow the cluster scopes)")
			}
			if workspace != "" && (global || project != "") {
				return errors.New("--workspace does not go with --global or --project")
			}
			spec.Scope = api.BindingScope{Global: global, Workspace: workspace, ClusterGroup: clusterGroup, Cluster: cluster, Project: project}
			if selector != "" {
				sel, err := parseSelector(selector)
				if err != nil {
					return err
				}
				spec.Scope.ClusterSelector = sel
			}
			raw, err := json.Marshal(spec)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRoleBinding},
				Metadata: api.ObjectMeta{Name: args[0]}, Spec: raw}
			if dryRun {
				if _, _, err := c.Apply(cmd.Context(), obj, true); err != nil {
					return err
				}
				fmt.Fprintf(g.out, "rolebinding/%s valid (dry run)\n", args[0])
				return nil
			}
			if _, err := c.Create(cmd.Context(), obj); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "rolebinding/%s created: %s %s is %s at %s\n", args[0], strings.ToLower(spec.Subject.Kind), spec.Subject.Name, role, spec.Scope)
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&role, "role", "", "the role granted")
	f.StringVar(&user, "user", "", "the user granted the role")
	f.StringVar(&group, "group", "", "the group granted the role (as the identity provider names it)")
	f.BoolVar(&global, "global", false, "everywhere")
	f.StringVar(&workspace, "workspace", "", "in one workspace; with a cluster scope, the workspace of its clusters")
	f.StringVar(&selector, "cluster-selector", "", "on the clusters whose labels match, e.g. env=dev,tier in (edge)")
	f.StringVar(&clusterGroup, "cluster-group", "", "on the clusters of a ClusterGroup")
	f.StringVar(&cluster, "cluster", "", "on one cluster")
	f.StringVar(&project, "project", "", "in a project's namespaces on its clusters")
	f.BoolVar(&dryRun, "dry-run", false, "only check the binding")
	cmd.AddCommand(create)
	return cmd
}

// parseSelector reads a label selector as kubectl's -l takes it.
func parseSelector(s string) (*api.LabelSelector, error) {
	ls, err := metav1.ParseToLabelSelector(s)
	if err != nil {
		return nil, fmt.Errorf("invalid selector %q: %w", s, err)
	}
	out := &api.LabelSelector{MatchLabels: ls.MatchLabels}
	for _, e := range ls.MatchExpressions {
		out.MatchExpressions = append(out.MatchExpressions, api.LabelSelectorRequirement{Key: e.Key, Operator: string(e.Operator), Values: e.Values})
	}
	return out, nil
}

func newAuthCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "auth", Short: "Inspect authorisation"}
	var as string
	var quiet bool
	canI := &cobra.Command{
		Use:   "can-i VERB KIND [NAME] [--as USER]",
		Short: "Say whether an action is allowed: prints yes or no, exits 0 or 1",
		Example: `  flotilla auth can-i list clusters
  flotilla auth can-i delete gitrepos apps -n fleet-default
  flotilla auth can-i update clusters edge-17 --as alice`,
		Args: cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := api.AccessReview{Verb: args[0], Kind: args[1], Namespace: g.namespace, As: as}
			if len(args) == 3 {
				q.Name = args[2]
			}
			// kubectl's form: VERB KIND/NAME.
			if k, n, ok := strings.Cut(q.Kind, "/"); ok && q.Name == "" {
				q.Kind, q.Name = k, n
			}
			if g.allNamespaces {
				q.Namespace = ""
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var ans api.AccessReview
			if _, err := c.Do(cmd.Context(), "POST", api.PathCanI, q, &ans); err != nil {
				return err
			}
			if !quiet {
				if ans.Allowed {
					fmt.Fprintln(g.out, "yes")
				} else {
					fmt.Fprintln(g.out, "no")
				}
				if ans.Reason != "" {
					fmt.Fprintln(g.errOut, ans.Reason)
				}
			}
			if !ans.Allowed {
				return exitCode(1)
			}
			return nil
		},
	}
	canI.Flags().StringVar(&as, "as", "", "ask for another user (needs the right to list role bindings everywhere)")
	canI.Flags().BoolVarP(&quiet, "quiet", "q", false, "print nothing; the exit status answers")
	canI.Flags().BoolVarP(&g.allNamespaces, "all-namespaces", "A", false, "in every workspace")
	cmd.AddCommand(canI)
	return cmd
}
