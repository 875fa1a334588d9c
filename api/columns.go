package api

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Column is one column of a kind's table. The CLI prints these columns and the API serves
// them as a Kubernetes Table, so `flotilla get` and `kubectl get` show the same thing.
type Column struct {
	Name string
	// Wide columns are shown only with -o wide (priority 1 in a Kubernetes Table).
	Wide bool
	// Format is a Kubernetes column format hint ("name", "date", ""); Type is its type.
	Type  string
	Value func(o *Object, now time.Time) string
}

// Columns returns the columns of kind after NAME.
func Columns(kind string) []Column {
	ageCol := Column{Name: "AGE", Type: "string", Value: Age}
	labelsCol := Column{Name: "LABELS", Wide: true, Type: "string", Value: func(o *Object, _ time.Time) string { return LabelString(o.Metadata.Labels) }}
	str := func(name string, wide bool, f func(o *Object) string) Column {
		return Column{Name: name, Wide: wide, Type: "string", Value: func(o *Object, _ time.Time) string { return f(o) }}
	}
	switch kind {
	case KindCluster:
		st := func(o *Object) ClusterStatus { return decodeInto[ClusterStatus](o.Status) }
		inv := func(o *Object) ClusterInventory {
			if i := st(o).Inventory; i != nil {
				return *i
			}
			return ClusterInventory{}
		}
		return []Column{
			str("BUNDLES-READY", false, func(o *Object) string { return readyCount(st(o).Summary) }),
			str("STATE", false, func(o *Object) string { return orNone(st(o).State) }),
			str("K8S-VERSION", false, func(o *Object) string { return orNone(inv(o).KubernetesVersion) }),
			str("NODES", false, func(o *Object) string { return fmt.Sprint(inv(o).NodeCount) }),
			{Name: "LAST-SEEN", Type: "string", Value: func(o *Object, now time.Time) string {
				if t := st(o).LastSeen; t != nil {
					return ShortDuration(now.Sub(*t))
				}
				return "<never>"
			}},
			ageCol,
			str("ARCH", true, func(o *Object) string { return orNone(inv(o).Architecture) }),
			str("AGENT", true, func(o *Object) string { return orNone(inv(o).AgentVersion) }),
			str("TUNNEL", true, func(o *Object) string { return orNone(st(o).Tunnel) }),
			labelsCol,
		}
	case KindClusterGroup:
		st := func(o *Object) ClusterGroupStatus { return decodeInto[ClusterGroupStatus](o.Status) }
		return []Column{
			str("CLUSTERS", false, func(o *Object) string { return fmt.Sprint(st(o).ClusterCount) }),
			str("NOT-READY", false, func(o *Object) string { return fmt.Sprint(st(o).NonReadyClusterCount) }),
			ageCol,
			str("SELECTOR", true, func(o *Object) string {
				s := decodeInto[ClusterGroupSpec](o.Spec).Selector
				if s == nil {
					return "<none>"
				}
				b, _ := json.Marshal(s)
				return string(b)
			}),
		}
	case KindRegistrationToken:
		return []Column{
			str("USES", false, func(o *Object) string {
				return fmt.Sprint(decodeInto[RegistrationTokenStatus](o.Status).Uses)
			}),
			str("MAX-USES", false, func(o *Object) string {
				if n := decodeInto[RegistrationTokenSpec](o.Spec).MaxUses; n > 0 {
					return fmt.Sprint(n)
				}
				return "<unlimited>"
			}),
			str("EXPIRES", false, func(o *Object) string {
				if t := decodeInto[RegistrationTokenStatus](o.Status).Expires; t != nil {
					return t.UTC().Format(time.RFC3339)
				}
				return "<never>"
			}),
			ageCol,
		}
	case KindGitRepo:
		spec := func(o *Object) GitRepoSpec { return decodeInto[GitRepoSpec](o.Spec) }
		st := func(o *Object) GitRepoStatus { return decodeInto[GitRepoStatus](o.Status) }
		return []Column{
			str("REPO", false, func(o *Object) string { return spec(o).Repo }),
			str("COMMIT", false, func(o *Object) string {
				c := st(o).Commit
				if len(c) > 12 {
					c = c[:12]
				}
				return orNone(c)
			}),
			str("BUNDLES-READY", false, func(o *Object) string { return readyCount(st(o).Summary) }),
			str("STATUS", false, func(o *Object) string { return GitRepoState(st(o)) }),
			ageCol,
			str("BRANCH", true, func(o *Object) string {
				s := spec(o)
				if s.Revision != "" {
					return s.Revision
				}
				return orNone(s.Branch)
			}),
			str("PATHS", true, func(o *Object) string { return orNone(strings.Join(spec(o).Paths, ",")) }),
		}
	case KindBundle:
		st := func(o *Object) BundleStatus { return decodeInto[BundleStatus](o.Status) }
		return []Column{
			str("DEPLOYMENTS-READY", false, func(o *Object) string { return readyCount(st(o).Summary) }),
			str("STATUS", false, func(o *Object) string { return BundleState(st(o)) }),
			ageCol,
			str("CONTENT", true, func(o *Object) string {
				h := decodeInto[BundleSpec](o.Spec).ContentHash
				if len(h) > 19 {
					h = h[:19]
				}
				return orNone(h)
			}),
			labelsCol,
		}
	case KindSecret:
		return []Column{
			str("TYPE", false, func(o *Object) string { return decodeInto[SecretSpec](o.Spec).Type }),
			str("DATA", false, func(o *Object) string {
				s := decodeInto[SecretSpec](o.Spec)
				n := len(s.Data)
				for k := range s.StringData {
					if _, ok := s.Data[k]; !ok {
						n++
					}
				}
				return fmt.Sprint(n)
			}),
			ageCol,
		}
	case KindUser:
		spec := func(o *Object) UserSpec { return decodeInto[UserSpec](o.Spec) }
		return []Column{
			str("PROVIDER", false, func(o *Object) string { return orDefault(spec(o).Provider, ProviderLocal) }),
			str("DISABLED", false, func(o *Object) string { return fmt.Sprint(spec(o).Disabled) }),
			{Name: "LAST-LOGIN", Type: "string", Value: func(o *Object, now time.Time) string {
				if t := decodeInto[UserStatus](o.Status).LastLogin; t != nil {
					return ShortDuration(now.Sub(*t))
				}
				return "<never>"
			}},
			ageCol,
			str("DISPLAY-NAME", true, func(o *Object) string { return spec(o).DisplayName }),
			str("GROUPS", true, func(o *Object) string { return strings.Join(spec(o).Groups, ",") }),
		}
	case KindRole:
		return []Column{
			str("CONTEXT", false, func(o *Object) string { return decodeInto[RoleSpec](o.Spec).Context }),
			str("BUILTIN", false, func(o *Object) string { return fmt.Sprint(decodeInto[RoleStatus](o.Status).Builtin) }),
			ageCol,
			str("INHERITS", true, func(o *Object) string { return strings.Join(decodeInto[RoleSpec](o.Spec).InheritFrom, ",") }),
		}
	case KindRoleBinding:
		spec := func(o *Object) RoleBindingSpec { return decodeInto[RoleBindingSpec](o.Spec) }
		return []Column{
			str("ROLE", false, func(o *Object) string { return spec(o).RoleRef }),
			str("SUBJECT", false, func(o *Object) string { s := spec(o).Subject; return s.Kind + "/" + s.Name }),
			str("SCOPE", false, func(o *Object) string { return spec(o).Scope.String() }),
			ageCol,
		}
	case KindProject:
		spec := func(o *Object) ProjectSpec { return decodeInto[ProjectSpec](o.Spec) }
		return []Column{
			str("NAMESPACES", false, func(o *Object) string {
				s := spec(o)
				names := make([]string, 0, len(s.Namespaces))
				for _, n := range s.Namespaces {
					names = append(names, n.Name)
				}
				if s.NamespaceSelector != nil {
					names = append(names, "<selector>")
				}
				return orNone(strings.Join(names, ","))
			}),
			str("OVER-QUOTA", false, func(o *Object) string {
				for _, c := range decodeInto[ProjectStatus](o.Status).Conditions {
					if c.Type == ConditionOverQuota {
						return c.Status
					}
				}
				return "False"
			}),
			ageCol,
		}
	}
	return []Column{ageCol}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// notReady describes a summary's first non-ready deployment, e.g. "ErrApplied(2) [c1: boom]".
func notReady(s *Summary) string {
	n := s.DesiredReady - s.Ready
	if len(s.NonReadyResources) == 0 {
		return fmt.Sprintf("%s(%d)", StateNotReady, n)
	}
	r := s.NonReadyResources[0]
	out := fmt.Sprintf("%s(%d) [%s", r.State, n, r.Name)
	if r.Message != "" {
		out += ": " + r.Message
	}
	return out + "]"
}

// BundleState is a bundle's one-word state with the first reason it is not ready.
func BundleState(st BundleStatus) string {
	for _, c := range st.Conditions {
		if c.Type == "Ready" && c.Status == "False" && c.Message != "" && (st.Summary == nil || st.Summary.Ready >= st.Summary.DesiredReady) {
			// A stalled rollout or a bundle error, with every targeted cluster ready.
			return StateNotReady + ": " + c.Message
		}
	}
	if s := st.Summary; s != nil && s.Ready < s.DesiredReady {
		return notReady(s)
	}
	return StateReady
}

// GitRepoState is a GitRepo's one-word state: its error, a refused or paused commit, or
// how its bundles are doing.
func GitRepoState(st GitRepoStatus) string {
	if st.Error != "" {
		return "Error: " + st.Error
	}
	for _, c := range st.Conditions {
		if c.Status == "False" {
			if c.Message != "" {
				return c.Reason + ": " + c.Message
			}
			return c.Reason
		}
	}
	if st.Commit == "" {
		return "GitUpdating"
	}
	if s := st.Summary; s != nil && s.Ready < s.DesiredReady {
		return notReady(s)
	}
	return StateReady
}

func decodeInto[T any](raw json.RawMessage) T {
	var v T
	if len(raw) > 0 {
		json.Unmarshal(raw, &v)
	}
	return v
}

// Age is the age of o at now, as kubectl shows it.
func Age(o *Object, now time.Time) string {
	if o.Metadata.CreationTimestamp == nil {
		return "<unknown>"
	}
	return ShortDuration(now.Sub(*o.Metadata.CreationTimestamp))
}

// ShortDuration writes d as kubectl does: 45s, 12m, 5h, 3d.
func ShortDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

// LabelString writes labels as k=v,… sorted by key, or <none>.
func LabelString(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + l[k]
	}
	return orNone(strings.Join(keys, ","))
}

func readyCount(s *Summary) string {
	if s == nil {
		return "0/0"
	}
	return fmt.Sprintf("%d/%d", s.Ready, s.DesiredReady)
}
