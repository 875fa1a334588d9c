package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
)

// CoreV1 is the apiVersion of Kubernetes' core group. Secrets written for Kubernetes (and
// Fleet: git and Helm credentials) use it with type, data and stringData at the top level;
// Flotilla accepts that shape and stores it as its own Secret.
const CoreV1 = "v1"

// CoreV1Secret is a Secret in Kubernetes' shape.
type CoreV1Secret struct {
	TypeMeta   `json:",inline"`
	Metadata   ObjectMeta        `json:"metadata"`
	Type       string            `json:"type,omitempty"`
	Data       map[string]string `json:"data,omitempty"`
	StringData map[string]string `json:"stringData,omitempty"`
	// Immutable is accepted when false; Flotilla's Secrets can always be updated.
	Immutable *bool `json:"immutable,omitempty"`
}

// CoreV1Redacted stands for a redacted value in a Kubernetes-shaped Secret's data: the
// base64 of SecretRedacted, so that clients that decode data (kubectl describe, typed
// client-go) can, and sending it back keeps the stored value as SecretRedacted does.
var CoreV1Redacted = base64.StdEncoding.EncodeToString([]byte(SecretRedacted))

// IsCoreV1Secret reports whether a document's apiVersion and kind are Kubernetes' Secret.
func IsCoreV1Secret(apiVersion, kind string) bool {
	return apiVersion == CoreV1 && kind == KindSecret
}

// SecretFromCoreV1 decodes a Kubernetes-shaped Secret (JSON) into Flotilla's Secret. Unknown
// fields are refused, as everywhere in the API.
func SecretFromCoreV1(data []byte) (*Object, error) {
	var s CoreV1Secret
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("malformed Secret: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if s.Kind != "" && s.Kind != KindSecret || s.APIVersion != "" && s.APIVersion != CoreV1 {
		return nil, fmt.Errorf("%s %s is not a v1 Secret", s.APIVersion, s.Kind)
	}
	if s.Immutable != nil && *s.Immutable {
		return nil, fmt.Errorf("immutable Secrets are not supported: remove immutable: true")
	}
	for k, v := range s.Data {
		if v == CoreV1Redacted {
			s.Data[k] = SecretRedacted
		}
	}
	spec, err := json.Marshal(SecretSpec{Type: s.Type, Data: s.Data, StringData: s.StringData})
	if err != nil {
		return nil, err
	}
	return &Object{TypeMeta: TypeMeta{APIVersion: APIVersion, Kind: KindSecret}, Metadata: s.Metadata, Spec: spec}, nil
}

// CoreV1 returns a Secret in Kubernetes' shape. Only the type and data of the spec move;
// a sealed value never does.
func (o *Object) CoreV1() (*CoreV1Secret, error) {
	var spec SecretSpec
	if len(o.Spec) > 0 {
		if err := json.Unmarshal(o.Spec, &spec); err != nil {
			return nil, fmt.Errorf("secret %s/%s: %w", o.Metadata.Namespace, o.Metadata.Name, err)
		}
	}
	for k, v := range spec.Data {
		if v == SecretRedacted {
			spec.Data[k] = CoreV1Redacted
		}
	}
	return &CoreV1Secret{TypeMeta: TypeMeta{APIVersion: CoreV1, Kind: KindSecret}, Metadata: o.Metadata,
		Type: spec.Type, Data: spec.Data, StringData: spec.StringData}, nil
}
