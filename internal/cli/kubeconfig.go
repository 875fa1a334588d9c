package cli

import (
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"flotilla.dev/api"
	"flotilla.dev/internal/proxy"
)

func newKubeconfigCmd(g *globals) *cobra.Command {
	var outFile string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "kubeconfig [CLUSTER] [-o FILE] [--ttl D]",
		Short: "Write a kubeconfig for Flotilla's own API, or for a cluster through Flotilla",
		Long: `Without CLUSTER, write a kubeconfig for Flotilla's API server: its URL and CA, and your
token. With it, kubectl lists, watches, applies, patches, edits and deletes Flotilla's
objects (GitRepo, ClusterGroup, Bundle, Cluster, Secret, ...) and Fleet's fleet.cattle.io
manifests, and 'kubectl explain' describes their fields. The context's namespace is -n, or
` + api.DefaultNamespace + `.

With CLUSTER (a cluster of ` + api.DefaultNamespace + `; of another workspace, WORKSPACE.CLUSTER or
-n WORKSPACE CLUSTER), write a kubeconfig for that cluster's
Kubernetes API through Flotilla (` + api.PathK8sClusters + `CLUSTER): the server forwards
kubectl's calls through the cluster's agent as you, and the cluster's own RBAC, compiled
from your Flotilla role bindings, decides. The kubeconfig carries a new API token of yours
valid for --ttl (listed by 'flotilla token list'; revoke it with 'flotilla token revoke').

The file holds a token: it is written readable only by you.`,
		Example: `  flotilla kubeconfig -o ~/.kube/flotilla.yaml
  KUBECONFIG=~/.kube/flotilla.yaml kubectl get gitrepos
  flotilla kubeconfig edge-17 --ttl 8h -o ~/.kube/edge-17.yaml
  flotilla kubeconfig ops.db-1 -o ~/.kube/db-1.yaml     # cluster db-1 of workspace ops
  KUBECONFIG=~/.kube/edge-17.yaml kubectl get pods -A`,
		Args: cobra.MaximumNArgs(1),
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
			// kubectl takes one URL: with several replicas', the first.
			conn.server = firstServer(conn.server)
			server := conn.server
			var cfg *clientcmdapi.Config
			if len(args) == 1 {
				// A cluster of another workspace is WORKSPACE.NAME, or NAME with -n.
				cluster := args[0]
				if !strings.Contains(cluster, ".") && g.namespace != "" && g.namespace != api.DefaultNamespace {
					cluster = g.namespace + "." + cluster
				}
				if _, _, err := proxy.ParseCluster(cluster); err != nil {
					return err
				}
				c, err := g.client()
				if err != nil {
					return err
				}
				data, err := c.Kubeconfig(cmd.Context(), cluster, ttl)
				if err != nil {
					return fmt.Errorf("kubeconfig for cluster %s: %w", cluster, err)
				}
				if cfg, err = clientcmd.Load(data); err != nil {
					return fmt.Errorf("the server's kubeconfig: %w", err)
				}
				// The server names itself by the Host it was asked at; this CLI's server URL
				// and the CA it trusts are what it knows to work.
				server = strings.TrimRight(conn.server, "/") + api.PathK8sClusters + cluster
				for _, cl := range cfg.Clusters {
					cl.Server = server
					cl.CertificateAuthorityData = conn.ca
				}
			} else {
				name := "flotilla"
				if u, err := url.Parse(conn.server); err == nil && u.Host != "" {
					name = "flotilla-" + u.Hostname()
				}
				cfg = clientcmdapi.NewConfig()
				cfg.Clusters[name] = &clientcmdapi.Cluster{Server: conn.server, CertificateAuthorityData: conn.ca}
				cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: conn.token}
				cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name, Namespace: g.ns()}
				cfg.CurrentContext = name
			}
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
			fmt.Fprintf(g.errOut, "kubeconfig for %s written to %s\n", server, outFile)
			return nil
		},
	}
	cmd.Flags().StringVarP(&outFile, "output", "o", "", "file to write (default standard output)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "with CLUSTER: how long the kubeconfig's token is valid (default the server's maximum)")
	return cmd
}

func firstServer(list string) string {
	first, _, _ := strings.Cut(list, ",")
	return strings.TrimSpace(first)
}
