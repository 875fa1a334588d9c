package api

import (
	"bytes"
	"encoding/json"
	"testing"
)

// A Kubernetes-shaped Secret converts to Flotilla's and back without losing or inventing
// anything, and whatever is refused is refused with an error, never a panic.
func FuzzSecretFromCoreV1(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"git-auth","namespace":"ws"},"type":"kubernetes.io/basic-auth","data":{"username":"ZGVwbG95"},"stringData":{"password":"x"}}`))
	f.Add([]byte(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"a"},"immutable":false}`))
	f.Add([]byte(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"a"},"immutable":true}`))
	f.Add([]byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}`))
	f.Add([]byte(`{"kind":"Secret","value":"x"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := SecretFromCoreV1(data)
		if err != nil {
			return
		}
		if o.APIVersion != APIVersion || o.Kind != KindSecret {
			t.Fatalf("converted to %s %s", o.APIVersion, o.Kind)
		}
		v1, err := o.CoreV1()
		if err != nil {
			t.Fatalf("back to v1: %v", err)
		}
		again, err := json.Marshal(v1)
		if err != nil {
			t.Fatal(err)
		}
		o2, err := SecretFromCoreV1(again)
		if err != nil {
			t.Fatalf("the v1 form %s is refused: %v", again, err)
		}
		if !bytes.Equal(o.Spec, o2.Spec) || o.Metadata.Name != o2.Metadata.Name || o.Metadata.Namespace != o2.Metadata.Namespace {
			t.Fatalf("round trip changed the Secret: %s %+v, then %s %+v", o.Spec, o.Metadata, o2.Spec, o2.Metadata)
		}
	})
}
