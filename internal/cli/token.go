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
	cmd := &cobra.Command{Use: "token", Short: "Create registration tokens for agents; create, list and revoke API tokens",
		Long: `token create makes a registration token, which agents exchange for a cluster credential
(list and delete those with "flotilla get tokens" and "flotilla delete token NAME").
token create --api makes an API token for yourself, for scripts and tools.
token list and token revoke manage API tokens and login sessions: your own, or everyone's for
admins.`}
	var ttl time.Duration
	var maxUses int
	var labels, cluster string
	var apiToken, admin, replace bool
	var description string
	create := &cobra.Command{
		Use:   "create [NAME]",
		Short: "Create a registration token (or, with --api, an API token); its value is printed once",
		Long: `Create a RegistrationToken. Agents exchange it once for a per-cluster credential;
clusters registered with it get its labels. The value is printed once and stored only as a hash.

With --api, create an API token for yourself instead, with a description and a TTL (at most
the server's maximum, 90 days unless the server says otherwise, which is also the default).
Admins may ask for an admin token with --admin.`,
		Example: `  flotilla token create --ttl 24h --max-uses 100 --labels env=prod,site=berlin
  flotilla token create --cluster edge-17 --replace --max-uses 1 --ttl 1h   # edge-17 was rebuilt
  flotilla token create --api --description "CI pipeline" --ttl 720h`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if apiToken {
				if len(args) > 0 || maxUses != 0 || labels != "" || cluster != "" || replace {
					return fmt.Errorf("--api tokens take no NAME, --max-uses, --labels, --cluster or --replace")
				}
				return createAPIToken(cmd, g, description, ttl, admin)
			}
			if description != "" || admin {
				return fmt.Errorf("--description and --admin are for API tokens: add --api")
			}
			name := ""
			if len(args) == 1 {
				name = args[0]
			} else {
				b := make([]byte, 3)
				rand.Read(b)
				name = "token-" + hex.EncodeToString(b)
			}
			if replace && cluster == "" {
				return fmt.Errorf("--replace needs --cluster NAME: the cluster a rebuilt one replaces")
			}
			spec := api.RegistrationTokenSpec{MaxUses: maxUses, ClusterName: cluster, Replace: replace}
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
	create.Flags().DurationVar(&ttl, "ttl", 0, "how long the token stays valid (e.g. 24h); default forever (--api: the server's maximum)")
	create.Flags().BoolVar(&apiToken, "api", false, "create an API token for yourself rather than a registration token")
	create.Flags().StringVar(&description, "description", "", "what the API token is for (--api)")
	create.Flags().BoolVar(&admin, "admin", false, "make it an admin token (--api; admins only)")
	create.Flags().IntVar(&maxUses, "max-uses", 0, "how many clusters may register with it; 0 means unlimited")
	create.Flags().StringVar(&labels, "labels", "", "labels given to clusters registered with it, k=v,…")
	create.Flags().StringVar(&cluster, "cluster", "", "bind the token to this cluster: it registers only that cluster, and may take it over when it exists (e.g. its credential was lost)")
	create.Flags().BoolVar(&replace, "replace", false, "with --cluster: a rebuilt cluster (new identity, agent state lost) registering with the token re-adopts that Cluster, and the old cluster's credential stops working")
	cmd.AddCommand(create, newTokenListCmd(g), newTokenRevokeCmd(g))
	return cmd
}

func newTokenListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List API tokens and login sessions: your own (admins: everyone's)",
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
			fmt.Fprintln(tw, "ID\tUSER\tTYPE\tADMIN\tCREATED\tEXPIRES\tDESCRIPTION")
			for _, t := range tokens {
				typ := "api"
				if t.Session {
					typ = "session"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\t%s\n", t.ID, t.User, typ, t.Admin, timeOrDash(t.Created), timeOrDash(t.Expires), t.Description)
			}
			return tw.Flush()
		},
	}
}

func newTokenRevokeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "revoke ID",
		Short:   "Revoke an API token or session at once: your own (admins: anyone's)",
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

func createAPIToken(cmd *cobra.Command, g *globals, description string, ttl time.Duration, admin bool) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	req := api.CreateTokenRequest{Description: description, Admin: admin}
	if ttl > 0 {
		req.TTL = ttl.String()
	}
	t, err := c.CreateAPIToken(cmd.Context(), req)
	if err != nil {
		return err
	}
	fmt.Fprintln(g.out, t.Token)
	fmt.Fprintf(g.errOut, "API token %s for %s created, valid until %s; the value above is shown only now\n", t.ID, t.User, timeOrDash(t.Expires))
	return nil
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
