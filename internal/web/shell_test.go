package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"flotilla.dev/api"
	"flotilla.dev/internal/agent"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/testenv/kube"
	"flotilla.dev/internal/web"
)

// kubeRig is a real server with one real cluster (kube-apiserver, with the test kubelet
// running pod default/p) registered by a real agent (in this process) as fleet-default/edge.
type kubeRig struct {
	*rig
	cs   kubernetes.Interface
	echo *kube.EchoContainer
}

func startKubeRig(t *testing.T) *kubeRig {
	t.Helper()
	etcd := kube.StartEtcd(t)
	echo := kube.NewEchoContainer(t)
	kubelet := kube.StartKubelet(t, echo)
	kc := kube.StartCluster(t, etcd, kube.Options{Name: "web-shell", APIServerArgs: kube.KubeletAPIServerArgs})
	cs := kubernetes.NewForConfigOrDie(kc.RESTConfig())
	ctx := t.Context()
	if err := kubelet.RegisterNode(ctx, cs, "node-1"); err != nil {
		t.Fatal(err)
	}
	if err := kubelet.RunPod(ctx, cs, "default", "p", "10.1.0.50", nil); err != nil {
		t.Fatal(err)
	}
	r, checksum := startServer(t, "")
	spec, _ := json.Marshal(api.RegistrationTokenSpec{TTL: "1h"})
	out, err := r.admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRegistrationToken},
		Metadata: api.ObjectMeta{Name: "edge", Namespace: api.DefaultNamespace}, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	var st api.RegistrationTokenStatus
	json.Unmarshal(out.Status, &st)
	actx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		agent.Run(actx, agent.Config{Server: r.url, CAChecksum: checksum, Token: st.Token, ClusterName: "edge",
			RESTConfig: kc.RESTConfig(), StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler),
			PollInterval: time.Second, MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second})
	})
	waitFor(t, time.Minute, "the cluster registered", func() error {
		_, err := r.admin.Get(ctx, api.KindCluster, api.DefaultNamespace, "edge")
		return err
	})
	return &kubeRig{rig: r, cs: cs, echo: echo}
}

// bound waits until the cluster holds user's rules as Flotilla compiled them (the agent
// applies them from its desired state).
func (k *kubeRig) bound(t *testing.T, user string) {
	t.Helper()
	waitFor(t, time.Minute, user+"'s rules on the cluster", func() error {
		sar, err := k.cs.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: rbac.UserPrefix + user, ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: "default", Verb: "create", Resource: "pods", Subresource: "exec"}}}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		if !sar.Status.Allowed {
			return fmt.Errorf("not allowed yet")
		}
		return nil
	})
}

func waitFor(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = f(); err == nil {
			return
		}
	}
	t.Fatalf("%s: %v", what, err)
}

// terminal is the browser's end of a shell.
type terminal struct {
	t   *testing.T
	ws  *websocket.Conn
	out strings.Builder
}

// openShell opens the shell's WebSocket as c's user with the given Origin; it answers the
// HTTP status when the handshake was refused.
func (r *rig) openShell(t *testing.T, c *http.Client, cluster, origin string) (*terminal, int) {
	t.Helper()
	hc := &http.Client{Jar: c.Jar, Transport: c.Transport}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ws, res, err := websocket.Dial(ctx, r.url+"/clusters/fleet-default/"+cluster+"/shell/ws", &websocket.DialOptions{
		HTTPClient: hc, HTTPHeader: http.Header{"Origin": {origin}}})
	if err != nil {
		if res == nil {
			t.Fatal(err)
		}
		return nil, res.StatusCode
	}
	term := &terminal{t: t, ws: ws}
	t.Cleanup(func() { ws.CloseNow() })
	term.send(map[string]any{"t": "r", "cols": 100, "rows": 30})
	return term, http.StatusSwitchingProtocols
}

func (term *terminal) send(m map[string]any) {
	b, _ := json.Marshal(m)
	if err := term.ws.Write(term.t.Context(), websocket.MessageText, b); err != nil {
		term.t.Fatal(err)
	}
}

func (term *terminal) typ(s string) { term.send(map[string]any{"t": "i", "d": s}) }

// expect reads the terminal until its output since the last expect holds want.
func (term *terminal) expect(want string) string {
	term.t.Helper()
	ctx, cancel := context.WithTimeout(term.t.Context(), time.Minute)
	defer cancel()
	for !strings.Contains(term.out.String(), want) {
		_, b, err := term.ws.Read(ctx)
		if err != nil {
			term.t.Fatalf("waiting for %q: %v; the terminal shows:\n%s", want, err, term.out.String())
		}
		term.out.Write(b)
	}
	s := term.out.String()
	term.out.Reset()
	return s
}

// TestShell: the dashboard's kubectl shell reaches a real cluster through the server's proxy
// and a real agent's tunnel as the logged-in user: get lists the cluster's pods with the API
// server's columns, logs reads the container's log, exec runs in the pod (through the test
// kubelet) with input typed in the terminal, and the session's start is in the audit log.
// A user without rights on the cluster, a page of another site, and a fourth shell of one
// user are refused before anything runs.
func TestShell(t *testing.T) {
	defer func(d time.Duration) { *web.SessionCheck = d }(*web.SessionCheck)
	*web.SessionCheck = 200 * time.Millisecond
	k := startKubeRig(t)
	k.addUser(t, "alice", "")
	spec, _ := json.Marshal(api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "alice"}, RoleRef: rbac.RoleClusterOwner,
		Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{}}})
	if _, err := k.admin.Create(t.Context(), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRoleBinding},
		Metadata: api.ObjectMeta{Name: "alice-owner"}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	k.addUser(t, "mallory", "")
	k.bound(t, "alice")

	alice := k.browser(t)
	k.login(t, alice, "alice")
	code, _, page := get(t, alice, k.url+"/clusters/fleet-default/edge/shell")
	if code != http.StatusOK || !strings.Contains(page, `data-ws="/clusters/fleet-default/edge/shell/ws"`) {
		t.Fatalf("shell page: %d\n%s", code, page)
	}

	term, code := k.openShell(t, alice, "edge", k.url)
	if term == nil {
		t.Fatalf("alice's shell: %d", code)
	}
	term.expect("edge:default> ")
	term.typ("kubectl get pods\r")
	out := term.expect("edge:default> ")
	if !strings.Contains(out, "NAME") || !strings.Contains(out, "STATUS") || !strings.Contains(out, "\r\np ") {
		t.Errorf("get pods:\n%s", out)
	}
	term.typ("logs p\r")
	if out := term.expect("edge:default> "); !strings.Contains(out, "line 1") {
		t.Errorf("logs p:\n%s", out)
	}
	term.typ("get pods nope -o yaml\r")
	if out := term.expect("edge:default> "); !strings.Contains(out, "error: ") || !strings.Contains(out, "not found") {
		t.Errorf("get of a missing pod:\n%s", out)
	}
	term.typ("exec p -- echo a b\r")
	if out := term.expect("edge:default> "); !strings.Contains(out, "a b") {
		t.Errorf("exec echo:\n%s", out)
	}
	term.typ("exec p -- exit 3\r")
	if out := term.expect("edge:default> "); !strings.Contains(out, "[exit code 3]") {
		t.Errorf("exec exit 3:\n%s", out)
	}
	// An interactive exec: what is typed goes to the container, its output comes back.
	term.typ("exec p -- cat\r")
	term.typ("hello from the browser")
	term.expect("hello from the browser")
	term.ws.Close(websocket.StatusNormalClosure, "")

	// The shell's start is in the audit log under alice's name.
	waitFor(t, time.Minute, "the shell's audit record", func() error {
		var list api.AuditRecordList
		if _, err := k.admin.Do(t.Context(), http.MethodGet, api.PathAudit+"?verb=shell&user=alice", nil, &list); err != nil {
			return err
		}
		for _, rec := range list.Items {
			if rec.Kind == api.KindCluster && rec.Name == "edge" && rec.Code == http.StatusSwitchingProtocols {
				return nil
			}
		}
		return fmt.Errorf("records %+v", list.Items)
	})

	// A page of another site may not open alice's shell with her cookie.
	// Nor a page served over plain http from this host (injected on the network), nor one
	// whose Origin is null.
	for _, origin := range []string{"https://evil.example", strings.Replace(k.url, "https://", "http://", 1), "null"} {
		if term, code := k.openShell(t, alice, "edge", origin); term != nil || code != http.StatusForbidden {
			t.Errorf("a shell opened from %s: %d", origin, code)
		}
	}
	// mallory may not read the cluster: no shell, no page.
	mallory := k.browser(t)
	k.login(t, mallory, "mallory")
	if term, code := k.openShell(t, mallory, "edge", k.url); term != nil || (code != http.StatusForbidden && code != http.StatusNotFound) {
		t.Errorf("mallory's shell: %d", code)
	}
	if code, _, _ := get(t, mallory, k.url+"/clusters/fleet-default/edge/shell"); code != http.StatusForbidden && code != http.StatusNotFound {
		t.Errorf("mallory's shell page: %d", code)
	}
	// The cluster's page loads its recent events live from the cluster, as the user: a
	// warning comes first; a cluster that never connected is said to be so at once.
	now := metav1.Now()
	for i, typ := range []string{"Normal", "Warning", "Normal"} {
		if _, err := k.cs.CoreV1().Events("default").Create(t.Context(), &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("e%d", i)},
			InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "p"}, Type: typ, Reason: fmt.Sprintf("Reason%d", i),
			Message: "message " + typ, LastTimestamp: metav1.NewTime(now.Add(time.Duration(i) * time.Second)), Count: 1}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, page := get(t, alice, k.url+"/clusters/fleet-default/edge"); !strings.Contains(page, `hx-get="/clusters/fleet-default/edge/events"`) {
		t.Errorf("the cluster's page does not load its events")
	}
	_, _, frag := get(t, alice, k.url+"/clusters/fleet-default/edge/events")
	if i1, i2 := strings.Index(frag, "Reason1"), strings.Index(frag, "Reason2"); i1 < 0 || i2 < 0 || i1 > i2 || !strings.Contains(frag, "default/pod/p") {
		t.Errorf("alice's events of the cluster (the warning Reason1 first):\n%s", frag)
	}
	spec, _ = json.Marshal(api.ClusterSpec{})
	if _, err := k.admin.Create(t.Context(), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
		Metadata: api.ObjectMeta{Name: "cold", Namespace: api.DefaultNamespace}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	// (Said without asking for its tunnel: a wait would end in "did not answer".)
	if _, _, frag = get(t, alice, k.url+"/clusters/fleet-default/cold/events"); !strings.Contains(frag, "not connected") {
		t.Errorf("events of a cluster that never connected:\n%s", frag)
	}
	if _, _, frag = get(t, mallory, k.url+"/clusters/fleet-default/edge/events"); strings.Contains(frag, "Reason1") || !strings.Contains(frag, "events-absent") {
		t.Errorf("mallory's events of the cluster:\n%s", frag)
	}

	// Three shells of alice's at once, not four.
	var terms []*terminal
	for i := range 3 {
		term, code := k.openShell(t, alice, "edge", k.url)
		if term == nil {
			t.Fatalf("shell %d: %d", i+1, code)
		}
		terms = append(terms, term)
	}
	if term, code := k.openShell(t, alice, "edge", k.url); term != nil || code != http.StatusTooManyRequests {
		t.Errorf("a fourth shell: %d", code)
	}

	// Her session ended (an administrator resets her password): an open shell, an
	// interactive exec running in it, ends too.
	term = terms[0]
	term.expect("edge:default> ")
	term.typ("exec p -- cat\r")
	term.typ("still here")
	term.expect("still here")
	if err := k.admin.SetPassword(t.Context(), "alice", api.SetPasswordRequest{Password: "another password of alice's"}); err != nil {
		t.Fatal(err)
	}
	term.expect("Your session has ended")
}
