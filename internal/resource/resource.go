// Package resource owns the rules of each kind: strict decoding of spec and status (so an
// unknown or mistyped field is named in the error), validation, server-side defaults and how
// an update changes generation. The API server calls it before anything reaches the store.
package resource

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	kjson "sigs.k8s.io/json"

	"flotilla.dev/api"
)

// MaxObjectBytes bounds one stored object. Bundle content lives in the content store, so
// objects stay small however large the bundle.
const MaxObjectBytes = 1 << 20

type schema struct {
	spec     func() any
	status   func() any
	validate func(spec any) []api.StatusCause
	defaults func(spec any)
}

var schemas = map[string]schema{
	api.KindCluster: {
		spec:   func() any { return &api.ClusterSpec{} },
		status: func() any { return &api.ClusterStatus{} },
	},
	api.KindClusterGroup: {
		spec:   func() any { return &api.ClusterGroupSpec{} },
		status: func() any { return &api.ClusterGroupStatus{} },
		validate: func(s any) []api.StatusCause {
			return selectorCauses("spec.selector", s.(*api.ClusterGroupSpec).Selector)
		},
	},
	api.KindRegistrationToken: {
		spec:     func() any { return &api.RegistrationTokenSpec{} },
		status:   func() any { return &api.RegistrationTokenStatus{} },
		validate: validateToken,
	},
	api.KindGitRepo: {
		spec:     func() any { return &api.GitRepoSpec{} },
		status:   func() any { return &api.GitRepoStatus{} },
		validate: validateGitRepo,
		defaults: defaultGitRepo,
	},
	api.KindBundle: {
		spec:     func() any { return &api.BundleSpec{} },
		status:   func() any { return &api.BundleStatus{} },
		validate: validateBundle,
	},
	// The access kinds are checked against each other (known roles, no inheritance cycle)
	// by internal/auth/rbac when the API writes them; here they are only decoded strictly.
	api.KindUser: {
		spec:   func() any { return &api.UserSpec{} },
		status: func() any { return &api.UserStatus{} },
	},
	api.KindRole: {
		spec:   func() any { return &api.RoleSpec{} },
		status: func() any { return &api.RoleStatus{} },
	},
	api.KindRoleBinding: {
		spec:   func() any { return &api.RoleBindingSpec{} },
		status: func() any { return &struct{}{} },
	},
	api.KindProject: {
		spec:   func() any { return &api.ProjectSpec{} },
		status: func() any { return &api.ProjectStatus{} },
	},
}

// Invalid builds the error for an invalid object.
func Invalid(kind, name string, causes []api.StatusCause) *api.Status {
	msgs := make([]string, len(causes))
	for i, c := range causes {
		msgs[i] = c.Field + ": " + c.Message
	}
	return &api.Status{
		TypeMeta: api.TypeMeta{APIVersion: "v1", Kind: "Status"},
		Status:   "Failure",
		Code:     422,
		Reason:   api.ReasonInvalid,
		Message:  fmt.Sprintf("%s %q is invalid: %s", kind, name, strings.Join(msgs, "; ")),
		Details:  &api.StatusDetails{Name: name, Kind: kind, Causes: causes},
	}
}

// Prepare checks an object sent by a client for create or update, normalises its apiVersion
// (Fleet's group becomes Flotilla's), re-encodes spec and status from their typed form with
// defaults applied, and returns an *api.Status error naming every invalid field.
func Prepare(obj *api.Object) error {
	name := obj.Metadata.Name
	if _, ok := api.LookupKind(obj.Kind); !ok || obj.Kind == "" {
		return &api.Status{Status: "Failure", Code: 400, Reason: api.ReasonBadRequest,
			Message: fmt.Sprintf("unknown kind %q (known kinds: %s)", obj.Kind, kindNames())}
	}
	var causes []api.StatusCause
	if !api.KnownAPIVersion(obj.APIVersion, obj.Kind) {
		causes = append(causes, api.StatusCause{Field: "apiVersion", Message: fmt.Sprintf("unsupported value %q for kind %s (want %s)", obj.APIVersion, obj.Kind, api.APIVersion)})
	}
	obj.APIVersion = api.APIVersion
	k, _ := api.LookupKind(obj.Kind)
	switch {
	case k.Global && obj.Metadata.Namespace != "":
		causes = append(causes, api.StatusCause{Field: "metadata.namespace", Message: fmt.Sprintf("must be empty: %s is a global kind", obj.Kind)})
		causes = append(causes, validateMeta(&api.ObjectMeta{Name: "x", Namespace: "x", Labels: obj.Metadata.Labels, Annotations: obj.Metadata.Annotations})...)
	case k.Global:
		causes = append(causes, validateMeta(&api.ObjectMeta{Name: "x", Namespace: "x", Labels: obj.Metadata.Labels, Annotations: obj.Metadata.Annotations})...)
	default:
		causes = append(causes, validateMeta(&obj.Metadata)...)
	}
	if k.Global {
		causes = append(causes, globalNameCauses(obj.Kind, name)...)
	}
	sc := schemas[obj.Kind]
	spec := sc.spec()
	if len(obj.Spec) > 0 && !bytes.Equal(obj.Spec, []byte("null")) {
		causes = append(causes, decode("spec", obj.Spec, spec)...)
	}
	status := sc.status()
	if len(obj.Status) > 0 && !bytes.Equal(obj.Status, []byte("null")) {
		causes = append(causes, decode("status", obj.Status, status)...)
	}
	if len(causes) == 0 {
		if sc.defaults != nil {
			sc.defaults(spec)
		}
		if sc.validate != nil {
			causes = append(causes, sc.validate(spec)...)
		}
	}
	if len(causes) > 0 {
		return Invalid(obj.Kind, name, causes)
	}
	var err error
	if obj.Spec, err = json.Marshal(spec); err != nil {
		return fmt.Errorf("encoding spec: %w", err)
	}
	if len(obj.Status) > 0 {
		if obj.Status, err = json.Marshal(status); err != nil {
			return fmt.Errorf("encoding status: %w", err)
		}
	}
	return nil
}

// PrepareStatus checks a status sent to the status subresource.
func PrepareStatus(kind string, status json.RawMessage) (json.RawMessage, error) {
	sc, ok := schemas[kind]
	if !ok {
		return nil, fmt.Errorf("unknown kind %q", kind)
	}
	v := sc.status()
	if causes := decode("status", status, v); len(causes) > 0 {
		return nil, Invalid(kind, "", causes)
	}
	return json.Marshal(v)
}

func kindNames() string {
	var n []string
	for _, k := range api.Kinds {
		n = append(n, k.Kind)
	}
	return strings.Join(n, ", ")
}

// decode decodes strictly, reporting unknown, duplicate and mistyped fields by path.
func decode(field string, data []byte, v any) []api.StatusCause {
	strict, err := kjson.UnmarshalStrict(data, v)
	if err != nil {
		msg := err.Error()
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return []api.StatusCause{{Field: field + "." + te.Field, Message: fmt.Sprintf("must be %s, not %s", te.Type, te.Value)}}
		}
		return []api.StatusCause{{Field: field, Message: strings.TrimPrefix(msg, "json: ")}}
	}
	var causes []api.StatusCause
	for _, e := range strict {
		// Strict errors read `unknown field "a.b"`: name the full path.
		msg := e.Error()
		f := field
		if i := strings.Index(msg, `"`); i >= 0 {
			if j := strings.LastIndex(msg, `"`); j > i {
				f = field + "." + msg[i+1:j]
				msg = strings.TrimSpace(msg[:i])
			}
		}
		causes = append(causes, api.StatusCause{Field: f, Message: msg})
	}
	return causes
}

func validateMeta(m *api.ObjectMeta) []api.StatusCause {
	var causes []api.StatusCause
	if m.Name == "" {
		causes = append(causes, api.StatusCause{Field: "metadata.name", Message: "required"})
	} else {
		for _, msg := range validation.IsDNS1123Subdomain(m.Name) {
			causes = append(causes, api.StatusCause{Field: "metadata.name", Message: msg})
		}
	}
	for _, msg := range validation.IsDNS1123Label(m.Namespace) {
		causes = append(causes, api.StatusCause{Field: "metadata.namespace", Message: msg})
	}
	for k, v := range m.Labels {
		for _, msg := range validation.IsQualifiedName(k) {
			causes = append(causes, api.StatusCause{Field: "metadata.labels", Message: fmt.Sprintf("key %q: %s", k, msg)})
		}
		for _, msg := range validation.IsValidLabelValue(v) {
			causes = append(causes, api.StatusCause{Field: "metadata.labels." + k, Message: msg})
		}
	}
	for k := range m.Annotations {
		for _, msg := range validation.IsQualifiedName(strings.ToLower(k)) {
			causes = append(causes, api.StatusCause{Field: "metadata.annotations", Message: fmt.Sprintf("key %q: %s", k, msg)})
		}
	}
	return causes
}

// globalNameCauses checks the name of a global object. A User is named as its identity
// provider names it (an e-mail address, "DOMAIN.user", "oidc:1234"): printable, bounded, and
// free of what would change a URL path; the other access kinds have DNS names.
func globalNameCauses(kind, name string) []api.StatusCause {
	if kind != api.KindUser {
		var causes []api.StatusCause
		if name == "" {
			return []api.StatusCause{{Field: "metadata.name", Message: "required"}}
		}
		for _, msg := range validation.IsDNS1123Subdomain(name) {
			causes = append(causes, api.StatusCause{Field: "metadata.name", Message: msg})
		}
		return causes
	}
	if msg := UserNameProblem(name); msg != "" {
		return []api.StatusCause{{Field: "metadata.name", Message: msg}}
	}
	return nil
}

// MaxUserNameBytes bounds a user name; it becomes part of Kubernetes user names and labels.
const MaxUserNameBytes = 200

// UserNameProblem says what is wrong with a user name, or "" if nothing is.
func UserNameProblem(name string) string {
	switch {
	case name == "":
		return "required"
	case len(name) > MaxUserNameBytes:
		return fmt.Sprintf("longer than %d bytes", MaxUserNameBytes)
	case name == "." || name == "..":
		return fmt.Sprintf("%q is not a name", name)
	case strings.TrimSpace(name) != name:
		return "must not begin or end with a space"
	case strings.ContainsFunc(name, func(r rune) bool {
		return r < 0x20 || r == 0x7f || r == '/' || r == '\\' || r == '%' || r == '?' || r == '#'
	}):
		return "must not contain control characters or any of / \\ % ? #"
	case !utf8.ValidString(name):
		return "must be valid UTF-8"
	}
	return ""
}

// Selector converts a label selector; nil selects nothing.
func Selector(s *api.LabelSelector) (labels.Selector, error) {
	if s == nil {
		return labels.Nothing(), nil
	}
	ls := &metav1.LabelSelector{MatchLabels: s.MatchLabels}
	for _, e := range s.MatchExpressions {
		ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: e.Key, Operator: metav1.LabelSelectorOperator(e.Operator), Values: e.Values,
		})
	}
	return metav1.LabelSelectorAsSelector(ls)
}

func selectorCauses(field string, s *api.LabelSelector) []api.StatusCause {
	if _, err := Selector(s); err != nil {
		return []api.StatusCause{{Field: field, Message: err.Error()}}
	}
	return nil
}
