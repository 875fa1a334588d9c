package api

// KindSecret holds credentials the server itself uses: git access for GitRepos (basic auth or
// tokens, SSH keys with known_hosts), Helm repository access, and webhook secrets. Its values
// are stored encrypted and never returned by the API.
const KindSecret = "Secret"

// Secret types. They are Kubernetes' names, so secrets written for Fleet keep theirs; keys are
// Fleet's too.
const (
	// SecretTypeOpaque holds any keys; Fleet's Helm and webhook secrets are of this type.
	SecretTypeOpaque = "Opaque"
	// SecretTypeBasicAuth holds SecretKeyUsername and SecretKeyPassword, or SecretKeyToken.
	SecretTypeBasicAuth = "kubernetes.io/basic-auth"
	// SecretTypeSSHAuth holds SecretKeySSHPrivateKey and, to verify the server, SecretKeyKnownHosts.
	SecretTypeSSHAuth = "kubernetes.io/ssh-auth"
	// SecretTypeHelmRepo holds a Helm repository's SecretKeyUsername and SecretKeyPassword
	// and/or its CA (SecretKeyCACerts).
	SecretTypeHelmRepo = "flotilla.dev/helm-repo"
)

// Well-known keys of a Secret's data.
const (
	SecretKeyUsername      = "username"
	SecretKeyPassword      = "password"
	SecretKeyToken         = "token"
	SecretKeySSHPrivateKey = "ssh-privatekey"
	SecretKeySSHPassphrase = "passphrase"
	SecretKeyKnownHosts    = "known_hosts"
	SecretKeyCACerts       = "cacerts"
)

// SecretRedacted replaces every value of a Secret the API returns. It is not valid base64, so
// it can never be mistaken for a value; sending it back in an update keeps the stored value,
// which makes `get -o yaml`, edit, `apply` safe.
const SecretRedacted = "**redacted**"

// SecretRedactedRefused is the message refusing SecretRedacted where it cannot stand for a
// stored value: in stringData (plain text, never shown, so never sent back), or in data for
// a key with nothing stored.
const SecretRedactedRefused = "is " + SecretRedacted + ", which stands for a value the API does not show and is never a value itself: give the value"

// SecretSpec is a Secret's content. Data values are base64-encoded as in Kubernetes, and
// StringData values plain text, merged over Data on write.
type SecretSpec struct {
	// Type says which keys the Secret must have: kubernetes.io/basic-auth, kubernetes.io/ssh-auth,
	// flotilla.dev/helm-repo, or Opaque (the default) for any.
	Type string `json:"type,omitempty"`
	// Data are the values, base64-encoded. They are never returned: reads show **redacted**.
	Data map[string]string `json:"data,omitempty"`
	// StringData are values in plain text, merged over Data on write and never returned.
	StringData map[string]string `json:"stringData,omitempty"`
	// Sealed is Data encrypted with the server's key. The server sets it and never returns it.
	Sealed string `json:"sealed,omitempty"`
}
