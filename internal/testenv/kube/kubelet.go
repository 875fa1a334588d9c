package kube

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

// Container is what runs "in" every pod of a Kubelet: Go functions standing in for a
// container's processes.
type Container interface {
	// Exec runs cmd; an error carrying an exit code (k8s.io/utils/exec.CodeExitError) is
	// the command's exit status.
	Exec(ctx context.Context, cmd []string, in io.Reader, out, errOut io.Writer) error
	// Attach is attaching to the container's main process.
	Attach(ctx context.Context, in io.Reader, out, errOut io.Writer) error
	// PortForward connects stream to the pod's port.
	PortForward(ctx context.Context, port int32, stream io.ReadWriteCloser) error
	// Logs writes the container's log; with follow it goes on until ctx ends. Each write
	// reaches the client at once.
	Logs(ctx context.Context, w io.Writer, follow bool) error
}

// Kubelet is a test endpoint standing in for a node's kubelet behind a real kube-apiserver:
// a TLS server on loopback serving the kubelet's /exec, /attach, /portForward and
// /containerLogs endpoints with the CRI streaming server code the real kubelet uses
// (k8s.io/cri-streaming), running a Container instead of a container runtime, which cannot
// run here. RegisterNode makes a Node whose status points the API server at it; give the
// API server KubeletAPIServerArgs.
type Kubelet struct {
	srv  *httptest.Server
	c    Container
	node string
}

// KubeletAPIServerArgs are the kube-apiserver flags for reaching a Kubelet: by the node's
// InternalIP (no CA: the API server then does not verify the kubelet's certificate, as with
// kubelets' default self-signed ones).
var KubeletAPIServerArgs = []string{"--kubelet-preferred-address-types=InternalIP"}

// StartKubelet starts a kubelet endpoint serving c; it is stopped when t ends.
func StartKubelet(t testing.TB, c Container) *Kubelet {
	t.Helper()
	k := &Kubelet{c: c}
	mux := http.NewServeMux()
	mux.HandleFunc("/exec/", k.exec)
	mux.HandleFunc("/attach/", k.attach)
	mux.HandleFunc("/portForward/", k.portForward)
	mux.HandleFunc("/containerLogs/", k.logs)
	k.srv = httptest.NewUnstartedServer(mux)
	k.srv.StartTLS()
	t.Cleanup(func() {
		k.srv.CloseClientConnections()
		k.srv.Close()
	})
	return k
}

// Addr is the kubelet's host:port.
func (k *Kubelet) Addr() string { return k.srv.Listener.Addr().String() }

// RegisterNode creates (or updates) Node name, its status pointing at the kubelet.
func (k *Kubelet) RegisterNode(ctx context.Context, cs kubernetes.Interface, name string) error {
	host, port, _ := net.SplitHostPort(k.Addr())
	p, _ := strconv.Atoi(port)
	node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating node %s: %w", name, err)
	}
	node.Status = corev1.NodeStatus{
		Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: host}},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(p)}},
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "TestKubelet",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
	}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting the status of node %s: %w", name, err)
	}
	k.node = name
	return nil
}

// RunPod creates Pod ns/name, with one container "main", on the kubelet's node (after
// RegisterNode), and sets its status to running at ip, as a kubelet would.
func (k *Kubelet) RunPod(ctx context.Context, cs kubernetes.Interface, ns, name, ip string, labels map[string]string) error {
	pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: k.node, Containers: []corev1.Container{{Name: "main", Image: "test"}}}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating pod %s/%s: %w", ns, name, err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "main", Ready: true, Image: "test", ImageID: "test",
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}}}}
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting the status of pod %s/%s: %w", ns, name, err)
	}
	return nil
}

// podPath splits /VERB/NS/POD[/UID]/CONTAINER.
func podPath(p string, withContainer bool) (pod, container string, ok bool) {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	switch {
	case withContainer && (len(parts) == 4 || len(parts) == 5):
		return parts[2], parts[len(parts)-1], true
	case !withContainer && (len(parts) == 3 || len(parts) == 4):
		return parts[2], "", true
	}
	return "", "", false
}

// The kubelet's defaults.
const (
	streamIdle     = 4 * time.Hour
	streamCreation = 30 * time.Second
)

func (k *Kubelet) exec(w http.ResponseWriter, r *http.Request) {
	pod, container, ok := podPath(r.URL.Path, true)
	opts, err := remotecommand.NewOptions(r)
	if !ok || err != nil {
		http.Error(w, fmt.Sprintf("bad exec request %s: %v", r.URL.Path, err), http.StatusBadRequest)
		return
	}
	remotecommand.ServeExec(w, r, execFunc(k.c.Exec), pod, "", container, r.URL.Query()["command"], opts,
		streamIdle, streamCreation, remotecommand.SupportedStreamingProtocols)
}

func (k *Kubelet) attach(w http.ResponseWriter, r *http.Request) {
	pod, container, ok := podPath(r.URL.Path, true)
	opts, err := remotecommand.NewOptions(r)
	if !ok || err != nil {
		http.Error(w, fmt.Sprintf("bad attach request %s: %v", r.URL.Path, err), http.StatusBadRequest)
		return
	}
	remotecommand.ServeAttach(w, r, attachFunc(k.c.Attach), pod, "", container, opts,
		streamIdle, streamCreation, remotecommand.SupportedStreamingProtocols)
}

func (k *Kubelet) portForward(w http.ResponseWriter, r *http.Request) {
	pod, _, ok := podPath(r.URL.Path, false)
	opts, err := portforward.NewV4Options(r)
	if !ok || err != nil {
		http.Error(w, fmt.Sprintf("bad port-forward request %s: %v", r.URL.Path, err), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, forwardFunc(k.c.PortForward), pod, "", opts,
		streamIdle, streamCreation, portforward.SupportedProtocols)
}

func (k *Kubelet) logs(w http.ResponseWriter, r *http.Request) {
	if _, _, ok := podPath(r.URL.Path, true); !ok {
		http.Error(w, "bad log request "+r.URL.Path, http.StatusBadRequest)
		return
	}
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	k.c.Logs(r.Context(), flushWriter{w}, follow)
}

type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	http.NewResponseController(f.w).Flush()
	return n, err
}

type execFunc func(ctx context.Context, cmd []string, in io.Reader, out, errOut io.Writer) error

func (f execFunc) ExecInContainer(ctx context.Context, _, _, _ string, cmd []string, in io.Reader, out, errOut io.WriteCloser,
	_ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	return f(ctx, cmd, orEmpty(in), orDiscard(out), orDiscard(errOut))
}

type attachFunc func(ctx context.Context, in io.Reader, out, errOut io.Writer) error

func (f attachFunc) AttachContainer(ctx context.Context, _, _, _ string, in io.Reader, out, errOut io.WriteCloser,
	_ bool, _ <-chan remotecommand.TerminalSize) error {
	return f(ctx, orEmpty(in), orDiscard(out), orDiscard(errOut))
}

type forwardFunc func(ctx context.Context, port int32, stream io.ReadWriteCloser) error

func (f forwardFunc) PortForward(ctx context.Context, _, _ string, port int32, stream io.ReadWriteCloser) error {
	return f(ctx, port, stream)
}

// The streaming server passes nil for a stream the client did not ask for.
func orEmpty(r io.Reader) io.Reader {
	if r == nil {
		return strings.NewReader("")
	}
	return r
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
