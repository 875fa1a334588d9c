package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

func newLoginCmd(g *globals) *cobra.Command {
	var checksum string
	var insecure, useOIDC bool
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Check and store the server URL, CA and token for later commands",
		Example: `  flotilla login --server https://127.0.0.1:8443 --token $TOKEN --ca-checksum 3f1c…
  flotilla login --server https://fleet.example.com --token $TOKEN --ca-file ca.crt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			server := first(g.server, os.Getenv("FLOTILLA_SERVER"))
			if useOIDC {
				return g.loginOIDC(ctx, server, checksum, insecure)
			}
			token := first(g.token, os.Getenv("FLOTILLA_TOKEN"))
			if server == "" || token == "" {
				return fmt.Errorf("login needs --server and --token")
			}
			var ca []byte
			var err error
			switch caFile := first(g.caFile, os.Getenv("FLOTILLA_CA_FILE")); {
			case caFile != "":
				if ca, err = os.ReadFile(caFile); err != nil {
					return fmt.Errorf("reading CA file: %w", err)
				}
			case checksum != "":
				if ca, err = client.FetchCA(ctx, server, checksum); err != nil {
					return err
				}
			case !insecure:
				return fmt.Errorf("login needs the server's CA: --ca-file, or --ca-checksum as printed by the server")
			}
			c, err := client.New(client.Config{Server: server, Token: token, CAData: ca, CAChecksum: checksum, Insecure: insecure && len(ca) == 0})
			if err != nil {
				return err
			}
			// Prove the token works before storing it.
			if _, err := c.List(ctx, api.KindCluster, "", client.ListOptions{Limit: 1}); err != nil {
				return fmt.Errorf("checking the token: %w", err)
			}
			path := g.configFile()
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return err
			}
			data, _ := json.MarshalIndent(clientConfig{Server: server, Token: token, CA: string(ca)}, "", "  ")
			if err := os.WriteFile(path, data, 0o600); err != nil {
				return fmt.Errorf("writing %s: %w", path, err)
			}
			fmt.Fprintf(g.out, "Logged in to %s; settings saved in %s\n", server, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&checksum, "ca-checksum", "", "sha256 checksum of the server CA, as printed by 'flotilla server'")
	cmd.Flags().BoolVar(&useOIDC, "oidc", false, "log in in a browser through the server's OpenID Connect provider")
	cmd.Flags().BoolVar(&insecure, "insecure-skip-tls-verify", false, "do not verify the server certificate (unsafe)")
	return cmd
}
