package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"flotilla.dev/client"
	"flotilla.dev/internal/auth/oidc"
)

// oidcLoginWait is how long `flotilla login --oidc` waits for the browser; the server forgets
// a login after 10 minutes anyway.
const oidcLoginWait = 10 * time.Minute

// openBrowser shows a URL to the user; tests replace it with a scripted browser.
var openBrowser = func(u string) error {
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "darwin":
		cmd = exec.Command("open", u)
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", u)
	default:
		cmd = exec.Command("xdg-open", u)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait()
	return nil
}

// loginOIDC logs in through the server's OpenID Connect provider: the browser goes through
// the server to the provider and back to a listener on 127.0.0.1 with a one-time code, which
// only this process can redeem, with the verifier of the challenge it sent at the start.
func (g *globals) loginOIDC(ctx context.Context, server, checksum string, insecure bool) error {
	if server == "" {
		return fmt.Errorf("login needs --server")
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
	c, err := client.New(client.Config{Server: server, CAData: ca, CAChecksum: checksum, Insecure: insecure && len(ca) == 0})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listening for the browser on 127.0.0.1: %w", err)
	}
	defer ln.Close()
	verifier := oauth2.GenerateVerifier()
	q := url.Values{
		"redirect_uri":          {"http://" + ln.Addr().String() + "/callback"},
		"code_challenge":        {oauth2.S256ChallengeFromVerifier(verifier)},
		"code_challenge_method": {"S256"},
	}
	loginURL := strings.TrimSuffix(server, "/") + oidc.PathLogin + "?" + q.Encode()

	type result struct{ code, err string }
	done := make(chan result, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Query()
		res := result{code: p.Get("code"), err: p.Get("error_description")}
		if res.err == "" && p.Get("error") != "" {
			res.err = p.Get("error")
		}
		res.err = printable(res.err)
		if r.URL.Path != "/callback" || (res.code == "" && res.err == "") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if res.err != "" {
			fmt.Fprintf(w, "<!doctype html><p>Login failed: %s</p>", html.EscapeString(res.err))
		} else {
			fmt.Fprint(w, "<!doctype html><p>Logged in to Flotilla. You may close this window.</p>")
		}
		select {
		case done <- res:
		default: // only the first answer counts
		}
	})}
	go srv.Serve(ln)
	defer func() {
		// Let the browser have its page before the listener goes.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()

	fmt.Fprintf(g.errOut, "Open this URL in a browser to log in:\n\n  %s\n\n", loginURL)
	if err := openBrowser(loginURL); err != nil {
		fmt.Fprintln(g.errOut, "(could not open a browser; open the URL yourself)")
	}
	wait, cancel := context.WithTimeout(ctx, oidcLoginWait)
	defer cancel()
	var res result
	select {
	case res = <-done:
	case <-wait.Done():
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("no login within %v", oidcLoginWait)
	}
	if res.err != "" {
		return fmt.Errorf("login refused: %s", res.err)
	}
	var tok oidc.TokenResponse
	if _, err := c.Do(ctx, http.MethodPost, oidc.PathToken, oidc.TokenRequest{Code: res.code, CodeVerifier: verifier}, &tok); err != nil {
		return fmt.Errorf("redeeming the login code: %w", err)
	}
	if tok.Token == "" {
		return errors.New("the server answered the login with no token")
	}

	path := g.configFile()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	// Expires sits beside the stored settings; a later field of the same name in
	// clientConfig would simply be shadowed by it.
	data, _ := json.MarshalIndent(struct {
		clientConfig
		Expires time.Time `json:"expires"`
	}{clientConfig{Server: server, Token: tok.Token, CA: string(ca)}, tok.Expires}, "", "  ")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	fmt.Fprintf(g.out, "Logged in to %s as %s until %s; settings saved in %s\n", server, tok.User, tok.Expires.Local().Format(time.RFC3339), path)
	return nil
}

// printable keeps text from the browser from moving the terminal: anything on the machine can
// send the listener a request.
func printable(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 {
			return ' '
		}
		return r
	}, s)
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
