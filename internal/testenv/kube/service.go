package kube

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// ServeEcho makes Service ns/name with ports http (80) and https (443), whose endpoint is pod
// (running at ip, see Kubelet.RunPod), and routes ip:8080 and ip:8443 through egress to echo
// servers on loopback: kube-apiserver proxies services only to pods' addresses, and never to
// loopback ones. The servers answer "METHOD REQUEST-URI[ tls] body=BODY".
func ServeEcho(t testing.TB, cs kubernetes.Interface, egress *Egress, ns, name, pod, ip string) {
	t.Helper()
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		tls := ""
		if r.TLS != nil {
			tls = " tls"
		}
		fmt.Fprintf(w, "%s %s%s body=%s", r.Method, r.URL.RequestURI(), tls, body)
	})
	plain := httptest.NewServer(echo)
	t.Cleanup(plain.Close)
	secure := httptest.NewTLSServer(echo)
	t.Cleanup(secure.Close)
	egress.Route(ip+":8080", plain.Listener.Addr().String())
	egress.Route(ip+":8443", secure.Listener.Addr().String())

	ctx := t.Context()
	if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
			{Name: "https", Port: 443, TargetPort: intstr.FromInt32(8443)},
		}}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating service %s/%s: %v", ns, name, err)
	}
	ready := true
	port := func(name string, p int32) discoveryv1.EndpointPort {
		return discoveryv1.EndpointPort{Name: &name, Port: &p}
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod}}},
		Ports: []discoveryv1.EndpointPort{port("http", 8080), port("https", 8443)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the endpoints of service %s/%s: %v", ns, name, err)
	}
}
