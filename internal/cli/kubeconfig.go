package cli

import (
	"fmt"
	"net/url"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"flotilla.dev/api"
)

func newKubeconfigCmd(g *globals) *cobra.Command {
	var outFile string
	cmd := &cobra.Command{
		Use:   "kubeconfig [-o FILE]",
		Short: "Write a kubeconfig with which kubectl works on Flotilla's own API",
		Long: `Write a kubeconfig for Flotilla's API server: its URL and CA, and your token. With it,
kubectl lists, watches, applies, patches, edits and deletes Flotilla's objects (GitRepo,
ClusterGroup, Bundle, Cluster, Secret, ...) and Fleet's fleet.cattle.io manifests, and
'kubectl explain' describes their fields. The context's namespace is -n, or ` + api.DefaultNamespace + `.

The file holds your token: it is written readable only by you.`,
		Example: `  flotilla kubeconfig -o ~/.kube/flotilla.yaml
  KUBECONFIG=~/.kube/flotilla.yaml kubectl get gitrepos`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := g.connection()
			if err != nil {
				return err
			}
			if len(conn.ca) == 0 {
				return fmt.Errorf("kubeconfig needs the server's CA: pass --ca-file, or run 'flotilla login' first")
			}
			if conn.token == "" {
				return fmt.Errorf("kubeconfig needs a token: pass --token, set FLOTILLA_TOKEN, or run 'flotilla login' first")
			}
			name := "flotilla"
			if u, err := url.Parse(conn.server); err == nil && u.Host != "" {
				name = "flotilla-" + u.Hostname()
			}
			cfg := clientcmdapi.NewConfig()
			cfg.Clusters[name] = &clientcmdapi.Cluster{Server: conn.server, CertificateAuthorityData: conn.ca}
			cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: conn.token}
			cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name, Namespace: g.ns()}
			cfg.CurrentContext = name
			data, err := clientcmd.Write(*cfg)
			if err != nil {
				return err
			}
			if outFile == "" || outFile == "-" {
				_, err = g.out.Write(data)
				return err
			}
			if err := os.WriteFile(outFile, data, 0o600); err != nil {
				return fmt.Errorf("writing %s: %w", outFile, err)
			}
			fmt.Fprintf(g.errOut, "kubeconfig for %s written to %s\n", conn.server, outFile)
			return nil
		},
	}
	cmd.Flags().StringVarP(&outFile, "output", "o", "", "file to write (default standard output)")
	return cmd
}
