package cli

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"flotilla.dev/api"
)

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage registration tokens for agents"}
	var ttl time.Duration
	var maxUses int
	var labels string
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
			spec := api.RegistrationTokenSpec{MaxUses: maxUses}
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
	cmd.AddCommand(create)
	return cmd
}
