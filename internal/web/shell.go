package web

// The kubectl shell: a terminal in the browser (xterm.js) on a WebSocket to the dashboard.
//
// Design: the server interprets a small kubectl-like command line (get, logs, exec, …) and
// makes each command a Kubernetes API call through the server's own cluster proxy
// (/k8s/clusters/REF/…) with the user's session token. The proxy decides with Flotilla's
// RBAC whether the user may reach the cluster, and forwards through the agent's tunnel
// impersonating the user, so the cluster's RBAC decides the rest: the shell can never do
// more than the user's kubeconfig could, and every call is audited as the user's. A shell
// process (a real kubectl, or a pod running one) would instead need credentials of its own
// and a sandbox; interpreting a few commands needs neither. `exec` hands the terminal to an
// interactive exec into a container (stdin, stdout, resize) over the Kubernetes exec
// WebSocket subprotocol v5.channel.k8s.io until the command ends.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/mattn/go-shellwords"
	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
	"flotilla.dev/internal/audit"
)

const (
	// maxShellMessage bounds a message from the browser (typed or pasted input, a resize).
	maxShellMessage = 64 << 10
	// maxExecMessage bounds a message from a container's exec stream.
	maxExecMessage = 1 << 20
	// maxLine bounds the command line being typed.
	maxLine = 4096
	// commandTimeout bounds a command other than exec; it includes waiting for a closed
	// tunnel to open, which the proxy bounds by its own wait.
	commandTimeout = 45 * time.Second
	// maxListed bounds the rows `get` asks for.
	maxListed = 500
	// maxLogBytes and defaultTail bound what `logs` fetches.
	maxLogBytes = 1 << 20
	defaultTail = 200
	// execProtocol is the Kubernetes exec WebSocket subprotocol: each message is a channel
	// byte (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize, 255 close) and its data.
	execProtocol = "v5.channel.k8s.io"
)

// shellMsg is a message from the browser: input typed ("i", with D) or the terminal's size
// ("r", with Cols and Rows).
type shellMsg struct {
	T    string `json:"t"`
	D    string `json:"d,omitempty"`
	Cols int    `json:"cols,omitempty"`
	Rows int    `json:"rows,omitempty"`
}

type shellData struct {
	Namespace, Name string
	WS              string
	Idle            time.Duration
}

// shellPage is the terminal's page. Only a user who may read the cluster gets it.
func (h *Handler) shellPage(w http.ResponseWriter, r *http.Request, u *user) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	if obj, res := h.getCluster(r, u, ns, name); obj == nil {
		h.errorPage(w, r, u, res.code, apiRefusal(res))
		return
	}
	// xterm.js styles its terminal with <style> elements it writes (sizes, colours): this
	// page alone allows inline styles; scripts stay the server's own files only.
	w.Header().Set("Content-Security-Policy", strings.Replace(contentSecurityPolicy, "style-src 'self'", "style-src 'self' 'unsafe-inline'", 1))
	h.render(w, r, http.StatusOK, "shell", page{Title: "Shell · " + name, User: u, Nav: "clusters",
		Data: shellData{Namespace: ns, Name: name, WS: "/clusters/" + url.PathEscape(ns) + "/" + url.PathEscape(name) + "/shell/ws", Idle: h.cfg.ShellIdle}})
}

// sameOrigin says whether a WebSocket's handshake came from a page of this dashboard: a
// browser always sends Origin on a WebSocket, and cookies go with it, so another site's page
// must not open one (cross-site WebSocket hijacking).
func (h *Handler) sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	o, err := url.Parse(r.Header.Get("Origin"))
	if err != nil || o.Host == "" {
		return false
	}
	// The scheme too: a page injected into http://HOST is not this HTTPS dashboard.
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if o.Scheme == scheme && o.Host == r.Host {
		return true
	}
	ext, err := url.Parse(h.cfg.ServerURL)
	return err == nil && ext.Host != "" && o.Scheme == ext.Scheme && o.Host == ext.Host
}

// originPatterns lets websocket.Accept take the external URL's host as well as the request's
// (behind a proxy that rewrites Host); sameOrigin has checked the origin already.
func (h *Handler) originPatterns() []string {
	if ext, err := url.Parse(h.cfg.ServerURL); err == nil && ext.Host != "" {
		return []string{ext.Host}
	}
	return nil
}

// shellSocket is the terminal's WebSocket: checked (origin, the user's right to read the
// cluster, the user's budget of shells), audited as a "shell" on the cluster, then served
// until the browser goes, the user types exit, or the session idles.
func (h *Handler) shellSocket(w http.ResponseWriter, r *http.Request, u *user) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	if !h.sameOrigin(r) {
		http.Error(w, "the shell may only be opened from this dashboard's pages", http.StatusForbidden)
		return
	}
	if obj, res := h.getCluster(r, u, ns, name); obj == nil {
		http.Error(w, apiRefusal(res), res.code)
		return
	}
	if !h.takeShell(u.User) {
		http.Error(w, fmt.Sprintf("%s has %d shells open already: close one first", u.User, h.cfg.ShellsPerUser), http.StatusTooManyRequests)
		return
	}
	defer h.giveShell(u.User)
	audit.Annotate(r.Context(), "", nil, api.KindCluster, ns, name)
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled, OriginPatterns: h.originPatterns()})
	if err != nil {
		return // Accept answered
	}
	audit.Begin(r.Context(), "shell")
	h.log.Info("dashboard shell started", "user", u.User, "cluster", ns+"/"+name, "source", r.RemoteAddr)
	ws.SetReadLimit(maxShellMessage)
	ref := name
	if ns != api.DefaultNamespace {
		ref = ns + "." + name
	}
	s := &shell{h: h, r: r, u: u, ref: ref, ws: ws, namespace: "default", cols: 80, rows: 24}
	reason := s.run(r.Context())
	ws.Close(websocket.StatusNormalClosure, reason)
}

// takeShell counts a shell of user's against the budgets; giveShell returns it.
func (h *Handler) takeShell(user string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.shells[user] >= h.cfg.ShellsPerUser || h.shellsOpen >= h.cfg.MaxShells {
		return false
	}
	h.shells[user]++
	h.shellsOpen++
	return true
}

func (h *Handler) giveShell(user string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.shells[user]--; h.shells[user] <= 0 {
		delete(h.shells, user)
	}
	h.shellsOpen--
}

// shell is one terminal session.
type shell struct {
	h         *Handler
	r         *http.Request // the WebSocket's request: address and host of the API calls
	u         *user
	ref       string // the cluster as the proxy names it: NAME or WORKSPACE.NAME
	ws        *websocket.Conn
	namespace string
	line      []rune
	esc       bool // inside an escape sequence (arrow keys…), which the line editor skips
	cols      int
	rows      int
}

// job is a command running.
type job struct {
	cancel context.CancelFunc
	done   chan struct{}
	// exec is the exec stream when the command is an exec: input goes to it.
	exec *execStream
}

func (s *shell) write(p []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.ws.Write(ctx, websocket.MessageBinary, p)
}

// print writes text, its line ends made the terminal's.
func (s *shell) print(text string) {
	s.write([]byte(strings.ReplaceAll(text, "\n", "\r\n")))
}

func (s *shell) prompt() { s.print(s.ref + ":" + s.namespace + "> ") }

// run serves the session and answers why it ended.
func (s *shell) run(ctx context.Context) string {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in := make(chan shellMsg)
	readErr := make(chan error, 1)
	go func() {
		defer close(in)
		for {
			typ, b, err := s.ws.Read(ctx)
			if err != nil {
				readErr <- err
				return
			}
			var m shellMsg
			if typ != websocket.MessageText || json.Unmarshal(b, &m) != nil || (m.T != "i" && m.T != "r") {
				readErr <- errors.New("a message was not one the shell understands")
				return
			}
			select {
			case in <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	s.print(fmt.Sprintf("Flotilla shell on cluster %s as %s. Type help for the commands.\n", s.ref, s.u.User))
	s.prompt()
	idle := time.NewTimer(s.h.cfg.ShellIdle)
	defer idle.Stop()
	// A session ended (logout, the user disabled, a password reset) ends its open shell and
	// any exec running in it, not only its next command.
	check := time.NewTicker(sessionCheck)
	defer check.Stop()
	var running *job
	var jobDone <-chan struct{}
	defer func() {
		if running != nil {
			running.cancel()
			<-running.done
		}
	}()
	for {
		select {
		case m, ok := <-in:
			if !ok {
				select {
				case err := <-readErr:
					return err.Error()
				default:
					return "closed"
				}
			}
			idle.Reset(s.h.cfg.ShellIdle)
			if m.T == "r" {
				if m.Cols > 0 && m.Cols <= 1000 && m.Rows > 0 && m.Rows <= 1000 {
					s.cols, s.rows = m.Cols, m.Rows
					if running != nil && running.exec != nil {
						running.exec.resize(ctx, s.cols, s.rows)
					}
				}
				continue
			}
			if running != nil {
				if running.exec != nil {
					running.exec.stdin(ctx, []byte(m.D))
				} else if strings.ContainsRune(m.D, 3) { // Ctrl-C stops a command
					running.cancel()
				}
				continue
			}
			line, end := s.edit(m.D)
			if end {
				s.print("\n")
				return "exit"
			}
			if line == nil {
				continue
			}
			if strings.TrimSpace(*line) == "exit" {
				return "exit"
			}
			running = s.start(ctx, *line)
			if running == nil {
				s.prompt()
				continue
			}
			jobDone = running.done
		case <-jobDone:
			running, jobDone = nil, nil
			s.prompt()
		case <-idle.C:
			s.print(fmt.Sprintf("\nNo input for %s: the shell is closed.\n", s.h.cfg.ShellIdle))
			return "idle"
		case <-check.C:
			if _, err := s.h.cfg.Auth.Authenticate(ctx, s.u.token); err != nil && ctx.Err() == nil {
				s.print("\nYour session has ended: the shell is closed.\n")
				return "session ended"
			}
		}
	}
}

// sessionCheck is how often an open shell checks that its session still works (a variable:
// tests shorten it).
var sessionCheck = 15 * time.Second

// edit feeds typed input to the line editor, echoing it. It answers the line when Enter
// ends one, and end when Ctrl-D is typed on an empty line.
func (s *shell) edit(d string) (line *string, end bool) {
	var echo strings.Builder
	defer func() { s.print(echo.String()) }()
	for _, c := range d {
		switch {
		case s.esc:
			// CSI sequences end with a letter or ~; others are two bytes.
			if c != '[' && c != 'O' && (c >= '@' && c <= '~') {
				s.esc = false
			}
		case c == 0x1b:
			s.esc = true
		case c == '\r' || c == '\n':
			l := string(s.line)
			s.line = s.line[:0]
			echo.WriteString("\n")
			return &l, false
		case c == 0x7f || c == 0x08:
			if len(s.line) > 0 {
				s.line = s.line[:len(s.line)-1]
				echo.WriteString("\b \b")
			}
		case c == 0x03: // Ctrl-C drops the line
			s.line = s.line[:0]
			echo.WriteString("^C\n")
			l := ""
			return &l, false
		case c == 0x04:
			if len(s.line) == 0 {
				return nil, true
			}
		case c == 0x15: // Ctrl-U
			echo.WriteString(strings.Repeat("\b \b", len(s.line)))
			s.line = s.line[:0]
		case c < 0x20 || c == utf8.RuneError:
		default:
			if len(s.line) < maxLine {
				s.line = append(s.line, c)
				echo.WriteRune(c)
			}
		}
	}
	return nil, false
}

// lineWriter writes a command's output to the terminal.
type lineWriter struct{ s *shell }

func (w lineWriter) Write(p []byte) (int, error) {
	w.s.print(string(p))
	return len(p), nil
}

// start runs a command line: nil when it was done at once (help, a namespace change, a
// mistake), else the running job.
func (s *shell) start(ctx context.Context, line string) *job {
	args, err := shellwords.Parse(line) // no environment or backtick expansion: only words
	if err != nil {
		s.print("error: " + strings.Map(printable, err.Error()) + "\n")
		return nil
	}
	if len(args) > 0 && (args[0] == "kubectl" || args[0] == "k") {
		args = args[1:]
	}
	if len(args) == 0 {
		return nil
	}
	out := lineWriter{s}
	switch args[0] {
	case "help":
		s.print(shellHelp)
		return nil
	case "ns", "namespace":
		if len(args) == 2 {
			if errs := validation.IsDNS1123Label(args[1]); len(errs) > 0 {
				s.print(fmt.Sprintf("error: namespace %q: %s\n", args[1], errs[0]))
				return nil
			}
			s.namespace = args[1]
		}
		s.print("namespace " + s.namespace + "\n")
		return nil
	case "get", "logs", "exec", "describe":
	default:
		s.print(fmt.Sprintf("error: unknown command %q; type help for the commands\n", args[0]))
		return nil
	}
	jctx, cancel := context.WithCancel(ctx)
	j := &job{cancel: cancel, done: make(chan struct{})}
	run := func(fn func(context.Context) error) {
		go func() {
			defer close(j.done)
			defer cancel()
			if err := fn(jctx); err != nil {
				if jctx.Err() != nil && ctx.Err() == nil {
					err = errors.New("interrupted")
				}
				s.print("error: " + strings.Map(printable, err.Error()) + "\n")
			}
		}()
	}
	switch args[0] {
	case "get", "describe":
		run(func(ctx context.Context) error { return s.get(ctx, out, args[0] == "describe", args[1:]) })
	case "logs":
		run(func(ctx context.Context) error { return s.logs(ctx, out, args[1:]) })
	case "exec":
		es, err := s.openExec(jctx, args[1:])
		if err != nil {
			cancel()
			s.print("error: " + strings.Map(printable, err.Error()) + "\n")
			return nil
		}
		j.exec = es
		run(func(ctx context.Context) error { return es.copyOut(ctx, s) })
	}
	return j
}

const shellHelp = `Commands (kubectl's words, run on this cluster as you, with your rights there):
  get RESOURCE [NAME] [-n NS | -A] [-l SELECTOR] [-o wide|yaml|json]
  describe RESOURCE NAME [-n NS]     the object as YAML
  logs POD [-c CONTAINER] [-n NS] [--tail N]
  exec POD [-c CONTAINER] [-n NS] -- COMMAND [ARG…]   an interactive terminal in the container
  ns [NAMESPACE]                     show or set the namespace of later commands
  exit                               close the shell (or Ctrl-D)
A leading "kubectl" is optional. Ctrl-C stops get and logs; in exec it goes to the container.
`

// resource is a kind the shell knows how to name. The set is fixed so that a command costs one
// call through the tunnel (no discovery round trip to a cold cluster first).
type resource struct {
	prefix     string // /api/v1 or /apis/GROUP/VERSION
	plural     string
	namespaced bool
}

var resources = func() map[string]resource {
	m := map[string]resource{}
	add := func(prefix, plural string, namespaced bool, names ...string) {
		r := resource{prefix, plural, namespaced}
		m[plural] = r
		for _, n := range names {
			m[n] = r
		}
	}
	add("/api/v1", "pods", true, "pod", "po")
	add("/api/v1", "services", true, "service", "svc")
	add("/api/v1", "configmaps", true, "configmap", "cm")
	add("/api/v1", "secrets", true, "secret")
	add("/api/v1", "serviceaccounts", true, "serviceaccount", "sa")
	add("/api/v1", "persistentvolumeclaims", true, "persistentvolumeclaim", "pvc")
	add("/api/v1", "events", true, "event", "ev")
	add("/api/v1", "endpoints", true, "ep")
	add("/api/v1", "resourcequotas", true, "resourcequota", "quota")
	add("/api/v1", "limitranges", true, "limitrange", "limits")
	add("/api/v1", "namespaces", false, "namespace", "ns")
	add("/api/v1", "nodes", false, "node", "no")
	add("/api/v1", "persistentvolumes", false, "persistentvolume", "pv")
	add("/apis/apps/v1", "deployments", true, "deployment", "deploy")
	add("/apis/apps/v1", "replicasets", true, "replicaset", "rs")
	add("/apis/apps/v1", "statefulsets", true, "statefulset", "sts")
	add("/apis/apps/v1", "daemonsets", true, "daemonset", "ds")
	add("/apis/batch/v1", "jobs", true, "job")
	add("/apis/batch/v1", "cronjobs", true, "cronjob", "cj")
	add("/apis/networking.k8s.io/v1", "ingresses", true, "ingress", "ing")
	add("/apis/networking.k8s.io/v1", "networkpolicies", true, "networkpolicy", "netpol")
	add("/apis/rbac.authorization.k8s.io/v1", "roles", true, "role")
	add("/apis/rbac.authorization.k8s.io/v1", "rolebindings", true, "rolebinding")
	add("/apis/rbac.authorization.k8s.io/v1", "clusterroles", false, "clusterrole")
	add("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", false, "clusterrolebinding")
	add("/apis/storage.k8s.io/v1", "storageclasses", false, "storageclass", "sc")
	add("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", false, "customresourcedefinition", "crd", "crds")
	return m
}()

// flags parses a command's flags; an error is the user's.
func flags(name string, args []string, def func(*pflag.FlagSet)) (*pflag.FlagSet, error) {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	def(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return fs, nil
}

func checkName(what, s string) error {
	if errs := validation.IsDNS1123Subdomain(s); len(errs) > 0 {
		return fmt.Errorf("%s %q: %s", what, s, errs[0])
	}
	return nil
}

// kube makes a call to the cluster through the proxy as the user; the answer is bounded.
func (s *shell) kube(ctx context.Context, path string, q url.Values, accept string) apiResult {
	u := api.PathK8sClusters + s.ref + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req := s.r.WithContext(ctx)
	res := s.h.callAccept(req, s.u.token, http.MethodGet, u, accept)
	return res
}

// get lists or reads objects as the cluster's API server prints them (its Table answer, so
// the columns are kubectl's), or one object as YAML or JSON.
func (s *shell) get(ctx context.Context, out io.Writer, describe bool, args []string) error {
	var ns, selector, output string
	var all bool
	fs, err := flags("get", args, func(fs *pflag.FlagSet) {
		fs.StringVarP(&ns, "namespace", "n", s.namespace, "")
		fs.BoolVarP(&all, "all-namespaces", "A", false, "")
		fs.StringVarP(&selector, "selector", "l", "", "")
		fs.StringVarP(&output, "output", "o", "", "")
	})
	if err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) < 1 || len(rest) > 2 || (describe && len(rest) != 2) {
		if describe {
			return errors.New("usage: describe RESOURCE NAME [-n NS]")
		}
		return errors.New("usage: get RESOURCE [NAME] [-n NS | -A] [-l SELECTOR] [-o wide|yaml|json]")
	}
	if describe {
		output = "yaml"
	}
	res, ok := resources[strings.ToLower(rest[0])]
	if !ok {
		return fmt.Errorf("the shell does not know resource %q (it knows pods, deployments, services, nodes, events, … : type help)", rest[0])
	}
	if err := checkName("namespace", ns); err != nil {
		return err
	}
	path := res.prefix
	if res.namespaced && !(all && len(rest) == 1) {
		path += "/namespaces/" + ns
	}
	path += "/" + res.plural
	if len(rest) == 2 {
		if err := checkName("name", rest[1]); err != nil {
			return err
		}
		path += "/" + rest[1]
	}
	q := url.Values{}
	if len(rest) == 1 {
		q.Set("limit", strconv.Itoa(maxListed))
		if selector != "" {
			q.Set("labelSelector", selector)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	switch output {
	case "yaml", "json":
		ans := s.kube(ctx, path, q, "application/json")
		if ans.code != http.StatusOK {
			return errors.New(ans.message())
		}
		if output == "json" {
			var b bytes.Buffer
			json.Indent(&b, ans.body, "", "  ")
			b.WriteByte('\n')
			out.Write(b.Bytes())
			return nil
		}
		y, err := yaml.JSONToYAML(ans.body)
		if err != nil {
			return fmt.Errorf("the answer could not be printed: %v", err)
		}
		out.Write(y)
		return nil
	case "", "wide":
	default:
		return fmt.Errorf("output %q: the shell prints wide, yaml or json", output)
	}
	q.Set("includeObject", "Metadata")
	ans := s.kube(ctx, path, q, "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
	if ans.code != http.StatusOK {
		return errors.New(ans.message())
	}
	var t metav1.Table
	if err := json.Unmarshal(ans.body, &t); err != nil || t.Kind != "Table" {
		return errors.New("the cluster did not answer a table")
	}
	printTable(out, &t, output == "wide", all && res.namespaced && len(rest) == 1)
	if len(t.Rows) == 0 {
		if all || !res.namespaced {
			fmt.Fprintln(out, "No resources found.")
		} else {
			fmt.Fprintf(out, "No resources found in %s namespace.\n", ns)
		}
	}
	if t.Continue != "" {
		more := "more"
		if t.RemainingItemCount != nil {
			more = strconv.FormatInt(*t.RemainingItemCount, 10) + " more"
		}
		fmt.Fprintf(out, "(the first %d shown, %s: narrow with -l or a name)\n", len(t.Rows), more)
	}
	return nil
}

// printTable prints a Table as kubectl does: upper-case headers, the columns of priority 0
// (all with wide), and the namespace first when listing every namespace.
func printTable(out io.Writer, t *metav1.Table, wide, withNS bool) {
	tw := tabwriter.NewWriter(out, 0, 8, 3, ' ', 0)
	var cols []int
	var head []string
	if withNS {
		head = append(head, "NAMESPACE")
	}
	for i, c := range t.ColumnDefinitions {
		if c.Priority == 0 || wide {
			cols = append(cols, i)
			head = append(head, strings.Map(printable, strings.ToUpper(c.Name)))
		}
	}
	if len(t.Rows) == 0 {
		return
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, r := range t.Rows {
		var cells []string
		if withNS {
			var m metav1.PartialObjectMetadata
			json.Unmarshal(r.Object.Raw, &m)
			cells = append(cells, strings.Map(printable, m.Namespace))
		}
		for _, i := range cols {
			v := ""
			if i < len(r.Cells) && r.Cells[i] != nil {
				v = fmt.Sprint(r.Cells[i])
			}
			cells = append(cells, strings.Map(printable, v))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	tw.Flush()
}

// printable keeps a cluster's text from writing control sequences to the terminal.
func printable(r rune) rune {
	if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
		return '?'
	}
	return r
}

// logs prints the last lines of a container's log.
func (s *shell) logs(ctx context.Context, out io.Writer, args []string) error {
	var ns, container string
	var tail int
	fs, err := flags("logs", args, func(fs *pflag.FlagSet) {
		fs.StringVarP(&ns, "namespace", "n", s.namespace, "")
		fs.StringVarP(&container, "container", "c", "", "")
		fs.IntVar(&tail, "tail", defaultTail, "")
	})
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: logs POD [-c CONTAINER] [-n NS] [--tail N]")
	}
	pod := fs.Arg(0)
	for what, v := range map[string]string{"namespace": ns, "pod": pod} {
		if err := checkName(what, v); err != nil {
			return err
		}
	}
	q := url.Values{"limitBytes": {strconv.Itoa(maxLogBytes)}}
	if tail >= 0 {
		q.Set("tailLines", strconv.Itoa(tail))
	}
	if container != "" {
		q.Set("container", container)
	}
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	ans := s.kube(ctx, "/api/v1/namespaces/"+ns+"/pods/"+pod+"/log", q, "*/*")
	if ans.code != http.StatusOK {
		return errors.New(ans.message())
	}
	// The log is the container's own output, terminal sequences included, as kubectl shows it.
	out.Write(ans.body)
	if len(ans.body) > 0 && ans.body[len(ans.body)-1] != '\n' {
		out.Write([]byte("\n"))
	}
	return nil
}

// execStream is an exec into a container: the v5.channel.k8s.io WebSocket to the cluster's
// API server, through the proxy and the tunnel, as the user.
type execStream struct {
	ws   *websocket.Conn
	stop func()
}

// openExec starts an exec with a terminal (like kubectl exec -it).
func (s *shell) openExec(ctx context.Context, args []string) (*execStream, error) {
	var ns, container string
	fs, err := flags("exec", args, func(fs *pflag.FlagSet) {
		fs.StringVarP(&ns, "namespace", "n", s.namespace, "")
		fs.StringVarP(&container, "container", "c", "", "")
		fs.BoolP("stdin", "i", true, "")
		fs.BoolP("tty", "t", true, "")
	})
	if err != nil {
		return nil, err
	}
	rest := fs.Args()
	if len(rest) < 2 || fs.ArgsLenAtDash() != 1 {
		return nil, errors.New("usage: exec POD [-c CONTAINER] [-n NS] -- COMMAND [ARG…]")
	}
	pod := rest[0]
	for what, v := range map[string]string{"namespace": ns, "pod": pod} {
		if err := checkName(what, v); err != nil {
			return nil, err
		}
	}
	// A terminal merges stderr into stdout, as kubectl exec -t does.
	q := url.Values{"stdin": {"true"}, "stdout": {"true"}, "tty": {"true"}, "command": rest[1:]}
	if container != "" {
		q.Set("container", container)
	}
	u := "http://dashboard" + api.PathK8sClusters + s.ref + "/api/v1/namespaces/" + ns + "/pods/" + pod + "/exec?" + q.Encode()
	dial, stop := s.h.loopback(s.r.RemoteAddr)
	dctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	ws, res, err := websocket.Dial(dctx, u, &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}},
		HTTPHeader:      http.Header{"Authorization": {"Bearer " + s.u.token}, "User-Agent": {"flotilla-dashboard-shell"}},
		Subprotocols:    []string{execProtocol},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		stop()
		if res != nil && res.Body != nil {
			b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
			return nil, errors.New(apiResult{code: res.StatusCode, body: b}.message())
		}
		if ctx.Err() != nil {
			return nil, errors.New("interrupted")
		}
		return nil, fmt.Errorf("the exec did not start: %v", err)
	}
	if ws.Subprotocol() != execProtocol {
		ws.CloseNow()
		stop()
		return nil, fmt.Errorf("the cluster answered exec with protocol %q, not %s", ws.Subprotocol(), execProtocol)
	}
	ws.SetReadLimit(maxExecMessage)
	es := &execStream{ws: ws, stop: stop}
	es.resize(ctx, s.cols, s.rows)
	return es, nil
}

func (e *execStream) send(ctx context.Context, channel byte, p []byte) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	e.ws.Write(ctx, websocket.MessageBinary, append([]byte{channel}, p...))
}

func (e *execStream) stdin(ctx context.Context, p []byte) { e.send(ctx, 0, p) }

func (e *execStream) resize(ctx context.Context, cols, rows int) {
	b, _ := json.Marshal(map[string]int{"Width": cols, "Height": rows})
	e.send(ctx, 4, b)
}

// copyOut writes the container's output to the terminal until the command ends, and then
// how it ended.
func (e *execStream) copyOut(ctx context.Context, s *shell) error {
	defer e.stop()
	defer e.ws.CloseNow()
	var status []byte
	for {
		_, b, err := e.ws.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // the shell ended
			}
			break // the API server closes the stream once the command ended
		}
		if len(b) == 0 {
			continue
		}
		switch b[0] {
		case 1, 2:
			s.write(b[1:])
		case 3:
			status = append(status, b[1:]...)
		}
	}
	var st metav1.Status
	if len(status) == 0 || json.Unmarshal(status, &st) != nil || st.Status == metav1.StatusSuccess {
		s.print("\n")
		return nil
	}
	code := ""
	if st.Details != nil {
		for _, c := range st.Details.Causes {
			if c.Type == "ExitCode" {
				code = c.Message
			}
		}
	}
	if code != "" {
		s.print("\n[exit code " + strings.Map(printable, code) + "]\n")
		return nil
	}
	return errors.New(st.Message)
}

// loopback answers a dial function whose connections are served by the server's own handler
// in memory, and a function that stops serving them. An exec is a WebSocket upgrade, which
// the in-process calls of the other commands (a recorded answer) cannot carry; going through
// the handler keeps it on the proxy's path (RBAC, impersonation, tunnel, audit) without a
// network connection to the server itself. remote is the browser's address, which the
// proxy's audit record shows.
func (h *Handler) loopback(remote string) (func(ctx context.Context, network, addr string) (net.Conn, error), func()) {
	ln := &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{}), remote: pipeAddr(remote)}
	srv := &http.Server{Handler: h.cfg.API, ReadHeaderTimeout: 30 * time.Second}
	go srv.Serve(ln)
	var once sync.Once
	stop := func() { once.Do(func() { srv.Close() }) }
	return ln.dial, stop
}

// pipeListener hands the server the far ends of in-memory connections (net.Pipe).
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	remote pipeAddr
}

type pipeAddr string

func (a pipeAddr) Network() string { return "tcp" }
func (a pipeAddr) String() string  { return string(a) }

// remoteConn is the server's end of a pipe, from the browser's address.
type remoteConn struct {
	net.Conn
	remote pipeAddr
}

func (c remoteConn) RemoteAddr() net.Addr { return c.remote }

func (l *pipeListener) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- remoteConn{server, l.remote}:
		return client, nil
	case <-l.closed:
	case <-ctx.Done():
	}
	client.Close()
	server.Close()
	return nil, net.ErrClosed
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr("dashboard") }
