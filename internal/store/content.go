package store

import (
	"bytes"
	"encoding/json"
	"maps"
	"reflect"

	"flotilla.dev/api"
)

// SameContent reports whether a and b hold the same spec, labels, annotations and
// managedFields: what users write of an object, as opposed to its status and version.
func SameContent(a, b *api.Object) bool {
	return SameJSON(a.Spec, b.Spec) && maps.Equal(a.Metadata.Labels, b.Metadata.Labels) &&
		maps.Equal(a.Metadata.Annotations, b.Metadata.Annotations) && SameJSON(a.Metadata.ManagedFields, b.Metadata.ManagedFields)
}

// SameJSON reports whether two JSON documents are equal as values.
func SameJSON(a, b json.RawMessage) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}
