package apiserver

import (
	"bytes"
	"encoding/json"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/internal/resource"
)

// FuzzDecodeObject decodes bodies as the API does, for every kind: decoding never panics, and
// an object accepted by validation is a fixed point: validating what was stored again
// changes nothing and is accepted again.
func FuzzDecodeObject(f *testing.F) {
	seeds := []string{
		`{"metadata":{"name":"a"},"spec":{"selector":{"matchLabels":{"env":"prod"}}}}`,
		`{"metadata":{"name":"a","labels":{"x":"y"}},"spec":{"repo":"https://h/r","pollingInterval":"1ns"}}`,
		`{"metadata":{"name":"a"},"spec":{"resources":[{"name":"a","content":"x"}],"rolloutStrategy":{"maxUnavailable":"-50%"}}}`,
		`{"metadata":{"name":"a"},"spec":{"maxUses":9223372036854775808}}`,
		`{"metadata":{"name":"a"},"spec":{"stringData":{"k":"**redacted**"}}}`,
		`{"metadata":{"name":"a"}}{"metadata":{"name":"b"}}`,
		"metadata: {name: a}\n---\nmetadata: {name: b}\n",
		"metadata:\n  name: a\nspec:\n  helm:\n    timeoutSeconds: -1\n",
		`{"apiVersion":"fleet.cattle.io/v1alpha1","kind":"GitRepo","metadata":{"name":"a"},"spec":{"repo":"git@h:r"}}`,
		"",
		"null",
		"a: &a [*a, *a]",
	}
	for i, s := range seeds {
		f.Add([]byte(s), i%2 == 1, uint8(i))
	}
	f.Fuzz(func(t *testing.T, body []byte, isYAML bool, kind uint8) {
		k := api.Kinds[int(kind)%len(api.Kinds)]
		obj, err := decodeObject(body, isYAML)
		if err != nil {
			if _, ok := err.(*api.Status); !ok {
				t.Fatalf("decode error %v is not a Status", err)
			}
			return
		}
		if obj.Kind == "" {
			obj.Kind = k.Kind
		}
		if obj.APIVersion == "" {
			obj.APIVersion = api.APIVersion
		}
		obj.Metadata.Namespace = "ns"
		obj.Status = nil
		if err := resource.Prepare(obj); err != nil {
			return
		}
		stored, err := json.Marshal(obj)
		if err != nil {
			t.Fatalf("encoding an accepted object: %v", err)
		}
		again, err := decodeObject(stored, false)
		if err != nil {
			t.Fatalf("the encoding of an accepted object is refused: %v\n%s", err, stored)
		}
		if err := resource.Prepare(again); err != nil {
			t.Fatalf("an accepted object is refused the second time: %v\n%s", err, stored)
		}
		twice, _ := json.Marshal(again)
		if !bytes.Equal(stored, twice) {
			t.Fatalf("validation is not a fixed point:\n%s\n%s", stored, twice)
		}
	})
}

func FuzzBodyIsYAML(f *testing.F) {
	for _, s := range []string{"", "application/json", "application/json; charset=utf-8", "application/yaml", "application/x-yaml", "text/plain", "application/", "application/merge-patch+json", ";;"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ct string) {
		_, err := bodyIsYAML(ct)
		if st, ok := err.(*api.Status); err != nil && (!ok || st.Code != 415) {
			t.Fatalf("bodyIsYAML(%q) = %v, want nil or a 415 Status", ct, err)
		}
	})
}
