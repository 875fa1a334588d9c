// Package api holds Flotilla's wire types: the Kubernetes-style objects the server stores and
// serves, and the messages agents exchange with the server. It is shared by the server, the agent
// and the CLI, and so imports only the standard library.
package api

import (
	"encoding/json"
	"time"
)

// Flotilla's own API group and the Fleet group whose manifests are accepted unchanged.
const (
	Group           = "flotilla.dev"
	Version         = "v1alpha1"
	APIVersion      = Group + "/" + Version
	FleetGroup      = "fleet.cattle.io"
	FleetAPIVersion = FleetGroup + "/v1alpha1"

	// DefaultNamespace is the workspace objects land in when neither the manifest nor the
	// caller names one, as in Fleet.
	DefaultNamespace = "fleet-default"
)

// TypeMeta names an object's schema.
type TypeMeta struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
}

// ObjectMeta is the metadata every stored object carries.
type ObjectMeta struct {
	// Name is the object's name, unique for its kind in its namespace.
	Name string `json:"name,omitempty"`
	// Namespace is the namespace the object lives in.
	Namespace string `json:"namespace,omitempty"`
	// UID identifies this object for its whole life; set by the server.
	UID string `json:"uid,omitempty"`
	// ResourceVersion changes on every write; an update that carries it succeeds only if the
	// object was not written since.
	ResourceVersion string `json:"resourceVersion,omitempty"`
	// Generation counts changes to the spec; set by the server.
	Generation int64 `json:"generation,omitempty"`
	// CreationTimestamp is when the object was created; set by the server.
	CreationTimestamp *time.Time `json:"creationTimestamp,omitempty"`
	// Labels are key-value pairs that selectors match.
	Labels map[string]string `json:"labels,omitempty"`
	// Annotations are key-value pairs for tools and people; selectors do not see them.
	Annotations map[string]string `json:"annotations,omitempty"`
	// ManagedFields records which field manager set which fields, as Kubernetes' server-side
	// apply keeps it; the API server maintains it for writes made through the API.
	ManagedFields json.RawMessage `json:"managedFields,omitempty"`
}

// Object is any stored resource. Spec and status stay raw here; each kind's typed spec lives in
// this package too and is decoded where it is needed, so generic code (store, API, CLI) never
// has to know every kind.
type Object struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta      `json:"metadata"`
	Spec     json.RawMessage `json:"spec,omitempty"`
	Status   json.RawMessage `json:"status,omitempty"`
}

// DeepCopy returns a copy that shares nothing mutable with o.
func (o *Object) DeepCopy() *Object {
	if o == nil {
		return nil
	}
	c := *o
	c.Metadata.Labels = copyMap(o.Metadata.Labels)
	c.Metadata.Annotations = copyMap(o.Metadata.Annotations)
	if o.Metadata.CreationTimestamp != nil {
		t := *o.Metadata.CreationTimestamp
		c.Metadata.CreationTimestamp = &t
	}
	if o.Metadata.ManagedFields != nil {
		c.Metadata.ManagedFields = append(json.RawMessage(nil), o.Metadata.ManagedFields...)
	}
	c.Spec = append(json.RawMessage(nil), o.Spec...)
	c.Status = append(json.RawMessage(nil), o.Status...)
	if o.Spec == nil {
		c.Spec = nil
	}
	if o.Status == nil {
		c.Status = nil
	}
	return &c
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// ListMeta describes a list response.
type ListMeta struct {
	ResourceVersion string `json:"resourceVersion,omitempty"`
	// Continue is set when more items remain; pass it back to read the next page as of the
	// same revision as the first.
	Continue string `json:"continue,omitempty"`
}

// List is the response to a list call. Items stay raw so a server can stream stored bytes.
type List struct {
	TypeMeta `json:",inline"`
	Metadata ListMeta          `json:"metadata"`
	Items    []json.RawMessage `json:"items"`
}

// Watch event types, as in Kubernetes.
const (
	Added    = "ADDED"
	Modified = "MODIFIED"
	Deleted  = "DELETED"
	Bookmark = "BOOKMARK"
	Error    = "ERROR"
)

// WatchEvent is one line of a watch stream.
type WatchEvent struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
}

// Status is the body of every error response, shaped like Kubernetes' metav1.Status so that
// people and tools recognise it.
type Status struct {
	TypeMeta `json:",inline"`
	Status   string         `json:"status,omitempty"`
	Message  string         `json:"message,omitempty"`
	Reason   string         `json:"reason,omitempty"`
	Code     int            `json:"code,omitempty"`
	Details  *StatusDetails `json:"details,omitempty"`
}

// StatusDetails names the object and fields an error is about.
type StatusDetails struct {
	Name   string        `json:"name,omitempty"`
	Kind   string        `json:"kind,omitempty"`
	Causes []StatusCause `json:"causes,omitempty"`
}

// StatusCause is one invalid field.
type StatusCause struct {
	Field   string `json:"field,omitempty"`
	Message string `json:"message,omitempty"`
}

// Reasons used in Status.
const (
	ReasonNotFound      = "NotFound"
	ReasonAlreadyExists = "AlreadyExists"
	ReasonConflict      = "Conflict"
	ReasonInvalid       = "Invalid"
	ReasonBadRequest    = "BadRequest"
	ReasonUnauthorized  = "Unauthorized"
	ReasonForbidden     = "Forbidden"
	ReasonGone          = "Expired"
	ReasonTooLarge      = "RequestEntityTooLarge"
	// ReasonUnsupportedMediaType refuses a body in an encoding the server does not read.
	ReasonUnsupportedMediaType = "UnsupportedMediaType"
	ReasonUnavailable          = "ServiceUnavailable"
	ReasonInternal             = "InternalError"
)

func (s *Status) Error() string { return s.Message }
