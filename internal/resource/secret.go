package resource

import (
	"encoding/base64"
	"fmt"
	"maps"
	"regexp"
	"slices"

	"flotilla.dev/api"
)

// Secrets are validated here like every kind; sealing and redacting their values is the
// secrets package's, which the API server calls through its hooks.
func init() {
	schemas[api.KindSecret] = schema{
		spec:     func() any { return &api.SecretSpec{} },
		status:   func() any { return &struct{}{} },
		validate: validateSecret,
		defaults: func(s any) {
			if spec := s.(*api.SecretSpec); spec.Type == "" {
				spec.Type = api.SecretTypeOpaque
			}
		},
	}
}

// secretKey is Kubernetes' rule for the keys of a Secret's data.
var secretKey = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)

var secretTypes = []string{api.SecretTypeOpaque, api.SecretTypeBasicAuth, api.SecretTypeSSHAuth, api.SecretTypeHelmRepo}

func validateSecret(s any) []api.StatusCause {
	spec := s.(*api.SecretSpec)
	var causes []api.StatusCause
	add := func(f, m string) { causes = append(causes, api.StatusCause{Field: f, Message: m}) }
	if !slices.Contains(secretTypes, spec.Type) {
		add("spec.type", fmt.Sprintf("unsupported value %q (use %v)", spec.Type, secretTypes))
	}
	if spec.Sealed != "" {
		add("spec.sealed", "is set by the server; give values in data or stringData")
	}
	has := map[string]bool{}
	for _, k := range slices.Sorted(maps.Keys(spec.Data)) {
		v := spec.Data[k]
		if !validSecretKey(k) {
			add("spec.data", fmt.Sprintf("key %q: must be at most 253 characters of letters, digits, '-', '_' or '.'", k))
		}
		if v != api.SecretRedacted {
			if _, err := base64.StdEncoding.DecodeString(v); err != nil {
				add("spec.data."+k, "must be base64-encoded (or use stringData for plain text)")
			}
		}
		has[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(spec.StringData)) {
		if !validSecretKey(k) {
			add("spec.stringData", fmt.Sprintf("key %q: must be at most 253 characters of letters, digits, '-', '_' or '.'", k))
		}
		if spec.StringData[k] == api.SecretRedacted {
			add("spec.stringData."+k, api.SecretRedactedRefused)
		}
		has[k] = true
	}
	switch spec.Type {
	case api.SecretTypeBasicAuth:
		if !has[api.SecretKeyPassword] && !has[api.SecretKeyToken] {
			add("spec.data", fmt.Sprintf("a %s secret needs %q (with %q) or %q", spec.Type, api.SecretKeyPassword, api.SecretKeyUsername, api.SecretKeyToken))
		}
	case api.SecretTypeSSHAuth:
		if !has[api.SecretKeySSHPrivateKey] {
			add("spec.data", fmt.Sprintf("a %s secret needs %q", spec.Type, api.SecretKeySSHPrivateKey))
		}
	case api.SecretTypeHelmRepo:
		if has[api.SecretKeyUsername] != has[api.SecretKeyPassword] {
			add("spec.data", fmt.Sprintf("a %s secret needs both %q and %q, or neither", spec.Type, api.SecretKeyUsername, api.SecretKeyPassword))
		}
	}
	return causes
}

func validSecretKey(k string) bool { return len(k) <= 253 && secretKey.MatchString(k) }
