package cli

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"flotilla.dev/api"
)

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Create registration tokens for agents; list and revoke API tokens",
		Long: `token create makes a registration token, which agents exchange for a cluster credential
(list and delete those with "flotilla get tokens" and "flotilla delete token NAME").
token list and token revoke manage the API tokens people and tools log in with.`}
	var ttl time.Duration
	var maxUses int
	var labels, cluster string
	create := &cobra.Command{
		Use:   "create [NAME]",
		Short: "Create a registration token; its value is printed once",
		Long: `Create a RegistrationToken. Agents exchange it once for a per-cluster credential;
clusters registered with it get its labels. The value is printed once and stored only as a hash.`,
		Example: `  flotilla token create --ttl 24h --max-uses 100 --labels env=prod,site=berlin`,
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			} else {
				b := make([]byte, 3)
				rand.Read(b)
				name = "token-" + hex.EncodeToString(b)
			}
			spec := api.RegistrationTokenSpec{MaxUses: maxUses, ClusterName: cluster}
			if ttl > 0 {
				spec.TTL = ttl.String()
			}
			if labels != "" {
				spec.Labels = map[string]string{}
				for _, kv := range strings.Split(labels, ",") {
					k, v, ok := strings.Cut(kv, "=")
					if !ok || k == "" {
						return fmt.Errorf("invalid label %q: want key=value", kv)
					}
					spec.Labels[k] = v
				}
			}
			raw, _ := json.Marshal(spec)
			c, err := g.client()
			if err != nil {
				return err
			}
			out, err := c.Create(cmd.Context(), &api.Object{
				TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRegistrationToken},
				Metadata: api.ObjectMeta{Name: name, Namespace: g.ns()}, Spec: raw,
			})
			if err != nil {
				return err
			}
			var st api.RegistrationTokenStatus
			json.Unmarshal(out.Status, &st)
			if st.Token == "" {
				return fmt.Errorf("the server returned no token value")
			}
			fmt.Fprintln(g.out, st.Token)
			fmt.Fprintf(g.errOut, "registration token %s/%s created", out.Metadata.Namespace, out.Metadata.Name)
			if st.Expires != nil {
				fmt.Fprintf(g.errOut, ", valid until %s", st.Expires.Format(time.RFC3339))
			}
			fmt.Fprintln(g.errOut, "; the value above is shown only now")
			return nil
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", 0, "how long the token stays valid (e.g. 24h); default forever")
	create.Flags().IntVar(&maxUses, "max-uses", 0, "how many clusters may register with it; 0 means unlimited")
	create.Flags().StringVar(&labels, "labels", "", "labels given to clusters registered with it, k=v,…")
	create.Flags().StringVar(&cluster, "cluster", "", "bind the token to this cluster: it registers only that cluster, and may take it over when it exists (e.g. its credential was lost)")
	cmd.AddCommand(create, newTokenListCmd(g), newTokenRevokeCmd(g))
	return cmd
}

func newTokenListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the API tokens (admins only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			tokens, err := c.ListAPITokens(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "ID\tUSER\tADMIN\tCREATED\tEXPIRES")
			for _, t := range tokens {
				fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\n", t.ID, t.User, t.Admin, timeOrDash(t.Created), timeOrDash(t.Expires))
			}
			return tw.Flush()
		},
	}
}

func newTokenRevokeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "revoke ID",
		Short:   "Revoke an API token at once (admins only)",
		Example: "  flotilla token list\n  flotilla token revoke 3f1c0a9b2e4d",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.RevokeAPIToken(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "API token %s of %s revoked\n", t.ID, t.User)
			return nil
		},
	}
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
