package resource

import (
	"encoding/json"
	"strings"
	"testing"

	"flotilla.dev/api"
)

func TestSecretValidation(t *testing.T) {
	tests := []struct {
		name string
		spec string
		want string // a field named in the error; "" for valid
	}{
		{"opaque by default", `{"stringData":{"github":"k"}}`, ""},
		{"basic auth", `{"type":"kubernetes.io/basic-auth","data":{"username":"dQ==","password":"cA=="}}`, ""},
		{"basic auth token", `{"type":"kubernetes.io/basic-auth","stringData":{"token":"t"}}`, ""},
		{"basic auth without password", `{"type":"kubernetes.io/basic-auth","stringData":{"username":"u"}}`, "spec.data"},
		{"ssh without key", `{"type":"kubernetes.io/ssh-auth","stringData":{"known_hosts":"h"}}`, "spec.data"},
		{"helm user without password", `{"type":"flotilla.dev/helm-repo","stringData":{"username":"u"}}`, "spec.data"},
		{"unknown type", `{"type":"bootstrap.kubernetes.io/token"}`, "spec.type"},
		{"not base64", `{"data":{"k":"not base64!"}}`, "spec.data.k"},
		{"redacted value", `{"data":{"k":"` + api.SecretRedacted + `"}}`, ""},
		{"bad key", `{"stringData":{"a/b":"x"}}`, "spec.stringData"},
		{"sealed by a client", `{"sealed":"v1:AAAA"}`, "spec.sealed"},
		{"unknown field", `{"value":"x"}`, "spec.value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindSecret},
				Metadata: api.ObjectMeta{Name: "s", Namespace: "ns"}, Spec: json.RawMessage(tt.spec)}
			err := Prepare(obj)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got error %v, want none", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want+":")):
				t.Errorf("got error %v, want one naming %s", err, tt.want)
			}
			if tt.want == "" && !strings.Contains(string(obj.Spec), `"type":`) {
				t.Errorf("prepared spec %s has no type", obj.Spec)
			}
		})
	}
}
