// Package cli is the `flotilla` command line: the server, the kubectl-like client commands
// and the simulator. Each command is a thin layer over client, server or the packages that
// do the work.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// Version is set at build time.
var Version = "dev"

// globals are the connection flags every client command shares.
type globals struct {
	server, token, caFile, configPath string
	namespace                         string
	allNamespaces                     bool
	out, errOut                       io.Writer
	in                                io.Reader
	// session is the stored login whose token a command used, if it did.
	session *clientConfig
}

// Execute runs the CLI with os.Args.
func Execute(ctx context.Context) int {
	cmd := NewRoot(os.Stdin, os.Stdout, os.Stderr)
	if err := cmd.ExecuteContext(ctx); err != nil {
		var code exitCode
		if errors.As(err, &code) {
			return int(code)
		}
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	return 0
}

// NewRoot builds the command tree.
func NewRoot(in io.Reader, out, errOut io.Writer) *cobra.Command {
	g := &globals{in: in, out: out, errOut: errOut}
	root := &cobra.Command{
		Use:           "flotilla",
		Short:         "Flotilla manages fleets of Kubernetes clusters",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
	}
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(errOut)
	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", "", "server URL, or several replicas' URLs separated by commas (env FLOTILLA_SERVER)")
	pf.StringVar(&g.token, "token", "", "bearer token (env FLOTILLA_TOKEN)")
	pf.StringVar(&g.caFile, "ca-file", "", "server CA certificate file (env FLOTILLA_CA_FILE)")
	// No backticks in flag help: pflag would take the quoted words for the argument's name.
	pf.StringVar(&g.configPath, "config", "", "client config file written by 'flotilla login' (env FLOTILLA_CONFIG)")
	// --version only: -v is too easily taken for "verbose".
	root.Flags().Bool("version", false, "print the version")
	pf.StringVarP(&g.namespace, "namespace", "n", "", "namespace (workspace); default "+api.DefaultNamespace)
	root.AddCommand(
		newServerCmd(g),
		newLoginCmd(g),
		newApplyCmd(g),
		newGetCmd(g),
		newDescribeCmd(g),
		newDeleteCmd(g),
		newMetaCmd(g, "label", "labels"),
		newMetaCmd(g, "annotate", "annotations"),
		newPatchCmd(g),
		newEditCmd(g),
		newKubeconfigCmd(g),
		newTokenCmd(g),
		newRoleBindingCmd(g),
		newAuthCmd(g),
		newUserCmd(g),
		newAuditCmd(g),
		newSimCmd(g),
		newRenderCmd(g),
		newBackupCmd(g),
		newRestoreCmd(g),
		newMigrateCmd(g),
	)
	explainRefusedSessions(root, g)
	return root
}

// explainRefusedSessions makes every command say, when the server refuses a stored login
// session (revoked, its user disabled), that logging in again is the way out.
func explainRefusedSessions(cmd *cobra.Command, g *globals) {
	if run := cmd.RunE; run != nil {
		cmd.RunE = func(cmd *cobra.Command, args []string) error {
			err := run(cmd, args)
			if g.session != nil && client.Code(err) == http.StatusUnauthorized {
				return fmt.Errorf("%w\nthe session stored by `flotilla login` was refused: log in again with `flotilla login --username %s`", err, first(g.session.User, "NAME"))
			}
			return err
		}
	}
	for _, sub := range cmd.Commands() {
		explainRefusedSessions(sub, g)
	}
}

// clientConfig is what `flotilla login` stores.
type clientConfig struct {
	Server string `json:"server"`
	Token  string `json:"token"`
	CA     string `json:"ca,omitempty"`
	// User, Provider and Expires describe a login's session; a token given to login has none.
	User     string     `json:"user,omitempty"`
	Provider string     `json:"provider,omitempty"`
	Expires  *time.Time `json:"expires,omitempty"`
}

func (g *globals) configFile() string {
	if g.configPath != "" {
		return g.configPath
	}
	if p := os.Getenv("FLOTILLA_CONFIG"); p != "" {
		return p
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		dir = "."
	}
	return filepath.Join(dir, "flotilla", "config.json")
}

func (g *globals) loadConfig() (clientConfig, error) {
	var c clientConfig
	data, err := os.ReadFile(g.configFile())
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("reading %s: %w", g.configFile(), err)
	}
	return c, nil
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// connection is where and as whom client commands connect.
type connection struct {
	server, token string
	ca            []byte
}

// connection resolves the server, token and CA from flags, then environment, then the
// login config.
func (g *globals) connection() (connection, error) {
	cfg, err := g.loadConfig()
	if err != nil {
		return connection{}, err
	}
	c := connection{server: first(g.server, os.Getenv("FLOTILLA_SERVER"), cfg.Server)}
	if c.server == "" {
		return c, errors.New("no server: pass --server, set FLOTILLA_SERVER, or run `flotilla login`")
	}
	c.token = first(g.token, os.Getenv("FLOTILLA_TOKEN"))
	if c.token == "" {
		if cfg.Expires != nil && !time.Now().Before(*cfg.Expires) {
			return c, fmt.Errorf("your session on %s expired at %s: log in again with `flotilla login --username %s`", cfg.Server, cfg.Expires.UTC().Format(time.RFC3339), first(cfg.User, "NAME"))
		}
		c.token = cfg.Token
		if cfg.Expires != nil {
			g.session = &cfg
		}
	}
	caFile := first(g.caFile, os.Getenv("FLOTILLA_CA_FILE"))
	if caFile != "" {
		if c.ca, err = os.ReadFile(caFile); err != nil {
			return c, fmt.Errorf("reading CA file: %w", err)
		}
	} else if cfg.CA != "" && c.server == cfg.Server {
		c.ca = []byte(cfg.CA)
	}
	return c, nil
}

// client builds an API client from flags, then environment, then the login config.
func (g *globals) client() (*client.Client, error) {
	c, err := g.connection()
	if err != nil {
		return nil, err
	}
	return client.New(client.Config{Server: c.server, Token: c.token, CAData: c.ca})
}

func (g *globals) ns() string {
	if g.namespace != "" {
		return g.namespace
	}
	return api.DefaultNamespace
}
