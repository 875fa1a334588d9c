package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// loginTarget is the server a login is for, with the CA it is trusted by.
type loginTarget struct {
	server   string
	ca       []byte
	checksum string
	insecure bool
}

// client returns an API client for the target carrying token.
func (t loginTarget) client(token string) (*client.Client, error) {
	return client.New(client.Config{Server: t.server, Token: token, CAData: t.ca, CAChecksum: t.checksum, Insecure: t.insecure && len(t.ca) == 0})
}

func newLoginCmd(g *globals) *cobra.Command {
	var checksum, username, provider string
	var insecure, passwordStdin, useOIDC bool
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Log in (with a user name and password, or a token) and store the server, CA and token for later commands",
		Long: `With --username, log in as a user of the local user store (or of --provider, e.g. ldap):
the password is prompted for, or read from the first line of stdin with --password-stdin, and
the session token the server returns is stored with its expiry. With --token, check and store
that token (an API token or the admin token).`,
		Example: `  flotilla login --server https://fleet.example.com --ca-file ca.crt --username alice
  echo "$PASSWORD" | flotilla login --server https://fleet.example.com --ca-file ca.crt --username alice --password-stdin
  flotilla login --server https://127.0.0.1:8443 --token $TOKEN --ca-checksum 3f1c…`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			t := loginTarget{server: first(g.server, os.Getenv("FLOTILLA_SERVER")), checksum: checksum, insecure: insecure}
			if t.server == "" {
				return fmt.Errorf("login needs --server")
			}
			if useOIDC {
				if username != "" {
					return fmt.Errorf("give --oidc or --username, not both")
				}
				return g.loginOIDC(ctx, t.server, checksum, insecure)
			}
			var err error
			switch caFile := first(g.caFile, os.Getenv("FLOTILLA_CA_FILE")); {
			case caFile != "":
				if t.ca, err = os.ReadFile(caFile); err != nil {
					return fmt.Errorf("reading CA file: %w", err)
				}
			case checksum != "":
				if t.ca, err = client.FetchCA(ctx, t.server, checksum); err != nil {
					return err
				}
			case !insecure:
				return fmt.Errorf("login needs the server's CA: --ca-file, or --ca-checksum as printed by the server")
			}
			var cfg clientConfig
			// Further ways to log in (an identity provider's browser flow) go here, each
			// returning the clientConfig to store.
			switch {
			case username != "":
				cfg, err = passwordLogin(ctx, g, t, provider, username, passwordStdin)
			default:
				cfg, err = tokenLogin(ctx, g, t)
			}
			if err != nil {
				return err
			}
			return saveLogin(g, cfg)
		},
	}
	cmd.Flags().StringVar(&checksum, "ca-checksum", "", "sha256 checksum of the server CA, as printed by 'flotilla server'")
	cmd.Flags().BoolVar(&useOIDC, "oidc", false, "log in in a browser through the server's OpenID Connect provider")
	cmd.Flags().BoolVar(&insecure, "insecure-skip-tls-verify", false, "do not verify the server certificate (unsafe)")
	cmd.Flags().StringVar(&username, "username", "", "log in as this user, with a password")
	cmd.Flags().StringVar(&provider, "provider", "", "identity provider that checks the password: local (default) or ldap")
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from the first line of stdin")
	return cmd
}

// tokenLogin checks a given token before it is stored.
func tokenLogin(ctx context.Context, g *globals, t loginTarget) (clientConfig, error) {
	token := first(g.token, os.Getenv("FLOTILLA_TOKEN"))
	if token == "" {
		return clientConfig{}, fmt.Errorf("login needs --username (to log in with a password) or --token")
	}
	c, err := t.client(token)
	if err != nil {
		return clientConfig{}, err
	}
	// Whoever the token is, not what it may do: a user's token may list nothing.
	if _, err := c.WhoAmI(ctx); err != nil {
		return clientConfig{}, fmt.Errorf("checking the token: %w", err)
	}
	return clientConfig{Server: t.server, Token: token, CA: string(t.ca)}, nil
}

// passwordLogin logs in with a password provider.
func passwordLogin(ctx context.Context, g *globals, t loginTarget, provider, username string, fromStdin bool) (clientConfig, error) {
	pw := newPasswordReader(g, fromStdin)
	password, err := pw.read(fmt.Sprintf("Password for %s: ", username))
	if err != nil {
		return clientConfig{}, err
	}
	c, err := t.client("")
	if err != nil {
		return clientConfig{}, err
	}
	resp, err := c.Login(ctx, api.LoginRequest{Provider: provider, Username: username, Password: password})
	if err != nil {
		return clientConfig{}, fmt.Errorf("logging in: %w", err)
	}
	exp := resp.Expires
	return clientConfig{Server: t.server, Token: resp.Token, CA: string(t.ca), User: resp.User, Provider: provider, Expires: &exp}, nil
}

// saveLogin stores a login's settings for later commands.
func saveLogin(g *globals, cfg clientConfig) error {
	path := g.configFile()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	data, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	who := ""
	if cfg.User != "" {
		who = " as " + cfg.User
	}
	fmt.Fprintf(g.out, "Logged in to %s%s; settings saved in %s\n", cfg.Server, who, path)
	if cfg.Expires != nil {
		fmt.Fprintf(g.out, "The session lasts until %s\n", cfg.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}

// passwordReader reads passwords from a terminal (without echo) or, with --password-stdin,
// one per line from stdin.
type passwordReader struct {
	g         *globals
	fromStdin bool
	lines     *bufio.Reader
}

func newPasswordReader(g *globals, fromStdin bool) *passwordReader {
	return &passwordReader{g: g, fromStdin: fromStdin, lines: bufio.NewReader(g.in)}
}

func (p *passwordReader) read(prompt string) (string, error) {
	if p.fromStdin {
		line, err := p.lines.ReadString('\n')
		if err != nil && !(errors.Is(err, io.EOF) && line != "") {
			return "", fmt.Errorf("reading a password from stdin: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			return "", errors.New("reading a password from stdin: empty line")
		}
		return line, nil
	}
	f, ok := p.g.in.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return "", errors.New("no terminal to ask for the password on: pass it on stdin with --password-stdin")
	}
	fmt.Fprint(p.g.errOut, prompt)
	b, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(p.g.errOut)
	if err != nil {
		return "", fmt.Errorf("reading the password: %w", err)
	}
	if len(b) == 0 {
		return "", errors.New("no password given")
	}
	return string(b), nil
}

// readNew reads a new password; on a terminal it is asked for twice.
func (p *passwordReader) readNew(prompt string) (string, error) {
	pw, err := p.read(prompt)
	if err != nil || p.fromStdin {
		return pw, err
	}
	again, err := p.read("Repeat it: ")
	if err != nil {
		return "", err
	}
	if again != pw {
		return "", errors.New("the two passwords differ")
	}
	return pw, nil
}

// isTerminal reports whether stdin is a terminal to prompt on.
func isTerminal(g *globals) bool {
	f, ok := g.in.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
