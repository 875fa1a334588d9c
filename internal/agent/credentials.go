package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// credentials are what registration gives the agent, and all it needs to talk to the
// server from then on.
type credentials struct {
	Server string `json:"server"`
	// CA is the server's CA in PEM, fetched once with the pinned checksum.
	CA         string `json:"ca,omitempty"`
	Credential string `json:"credential"`
	// ClientID is the cluster identity the credential was issued for: a state directory
	// copied to another cluster must not act for the first one.
	ClientID    string `json:"clientID"`
	ClusterName string `json:"clusterName"`
	Namespace   string `json:"namespace"`
	// Expires is when the credential stops working; RenewAfter when the agent renews it.
	// Both are unset for a credential of a server that does not expire them.
	Expires    *time.Time `json:"expires,omitempty"`
	RenewAfter *time.Time `json:"renewAfter,omitempty"`
	// TokenDigest is the sha256 of the registration token this credential was had for:
	// after the Cluster is deleted, only a different token registers it again (a token
	// left in the agent's configuration must not bring a deleted cluster back).
	TokenDigest string `json:"tokenDigest,omitempty"`
}

// tokenDigest is what credentials keep of a registration token.
func tokenDigest(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// credStore keeps the credentials: a file in the state directory, or a Secret in-cluster.
type credStore interface {
	// load returns nil, nil when nothing is stored.
	load(ctx context.Context) (*credentials, error)
	save(ctx context.Context, c *credentials) error
	// forget removes the stored credentials.
	forget(ctx context.Context) error
	// where names the store for an operator: the file or the Secret.
	where() string
}

const credentialsFile = "credentials.json"

// fileCreds keeps the credentials in the state directory, mode 0600.
type fileCreds struct{ dir *stateDir }

func (f fileCreds) load(context.Context) (*credentials, error) {
	var c credentials
	ok, err := f.dir.readJSON(credentialsFile, &c)
	if !ok || err != nil {
		return nil, err
	}
	return &c, nil
}

func (f fileCreds) save(_ context.Context, c *credentials) error {
	return f.dir.writeJSON(credentialsFile, c)
}

func (f fileCreds) forget(context.Context) error {
	if err := os.Remove(f.dir.path(credentialsFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the credential: %w", err)
	}
	return nil
}

func (f fileCreds) where() string { return "the file " + f.dir.path(credentialsFile) }

// secretCreds keeps the credentials in a Secret of the managed cluster, for an agent that
// runs in a pod whose file system does not outlive it.
type secretCreds struct {
	kube      kubernetes.Interface
	namespace string
	name      string
}

const (
	secretKeyServer      = "server"
	secretKeyCA          = "ca.crt"
	secretKeyCredential  = "credential"
	secretKeyClientID    = "clientID"
	secretKeyClusterName = "clusterName"
	secretKeyNamespace   = "namespace"
	secretKeyExpires     = "expires"
	secretKeyRenewAfter  = "renewAfter"
	secretKeyTokenDigest = "tokenDigest"
)

func timeData(t *time.Time) []byte {
	if t == nil {
		return nil
	}
	return []byte(t.UTC().Format(time.RFC3339))
}

func parseTimeData(b []byte) *time.Time {
	t, err := time.Parse(time.RFC3339, string(b))
	if err != nil {
		return nil
	}
	return &t
}

func (s secretCreds) load(ctx context.Context) (*credentials, error) {
	sec, err := s.kube.CoreV1().Secrets(s.namespace).Get(ctx, s.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading secret %s/%s: %w", s.namespace, s.name, err)
	}
	d := sec.Data
	if len(d[secretKeyCredential]) == 0 {
		return nil, nil
	}
	return &credentials{
		Server:      string(d[secretKeyServer]),
		CA:          string(d[secretKeyCA]),
		Credential:  string(d[secretKeyCredential]),
		ClientID:    string(d[secretKeyClientID]),
		ClusterName: string(d[secretKeyClusterName]),
		Namespace:   string(d[secretKeyNamespace]),
		Expires:     parseTimeData(d[secretKeyExpires]),
		RenewAfter:  parseTimeData(d[secretKeyRenewAfter]),
		TokenDigest: string(d[secretKeyTokenDigest]),
	}, nil
}

func (s secretCreds) save(ctx context.Context, c *credentials) error {
	data := map[string][]byte{
		secretKeyServer:      []byte(c.Server),
		secretKeyCA:          []byte(c.CA),
		secretKeyCredential:  []byte(c.Credential),
		secretKeyClientID:    []byte(c.ClientID),
		secretKeyClusterName: []byte(c.ClusterName),
		secretKeyNamespace:   []byte(c.Namespace),
		secretKeyExpires:     timeData(c.Expires),
		secretKeyRenewAfter:  timeData(c.RenewAfter),
		secretKeyTokenDigest: []byte(c.TokenDigest),
	}
	secrets := s.kube.CoreV1().Secrets(s.namespace)
	sec, err := secrets.Get(ctx, s.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = s.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.namespace}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) && !apierrors.IsForbidden(err) {
			return fmt.Errorf("creating namespace %s: %w", s.namespace, err)
		}
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: s.namespace, Labels: map[string]string{"app.kubernetes.io/name": "flotilla-agent"}},
			Type:       corev1.SecretTypeOpaque,
			Data:       data,
		}, metav1.CreateOptions{})
	case err == nil:
		sec.Data = data
		_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("writing secret %s/%s: %w", s.namespace, s.name, err)
	}
	return nil
}

func (s secretCreds) forget(ctx context.Context) error {
	err := s.kube.CoreV1().Secrets(s.namespace).Delete(ctx, s.name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting secret %s/%s: %w", s.namespace, s.name, err)
	}
	return nil
}

func (s secretCreds) where() string { return "the Secret " + s.namespace + "/" + s.name }
