package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/resource"
	"flotilla.dev/internal/store"
)

// Access is what the API's authorisation decisions are made from. Until SetAccess is called
// only admin identities may do anything.
type Access struct {
	// Authorizer is the in-memory index of roles, bindings and projects.
	Authorizer *rbac.Authorizer
	// ClusterGroups names the ClusterGroups of workspace ns whose selector picks a cluster
	// with these labels, so that bindings scoped to a ClusterGroup apply; nil means none.
	ClusterGroups func(ns string, labels map[string]string) []string
}

// SetAccess makes every route decide with a.
func (s *Server) SetAccess(a Access) { s.access = a }

type identityKey struct{}

// IdentityFrom returns the identity the API authenticated for the request of ctx, or nil.
func IdentityFrom(ctx context.Context) *auth.Identity {
	id, _ := ctx.Value(identityKey{}).(*auth.Identity)
	return id
}

func subjectOf(id *auth.Identity) rbac.Subject {
	if id == nil {
		return rbac.Subject{}
	}
	return rbac.Subject{User: id.User, Groups: id.Groups}
}

func forbidden(reason string) error { return fmt.Errorf("%w: %s", auth.ErrForbidden, reason) }

// clusterOf is what a decision needs to know about a Cluster object.
func (s *Server) clusterOf(ns, name string, lbls map[string]string) *rbac.Cluster {
	c := &rbac.Cluster{Name: name, Workspace: ns, Labels: lbls}
	if s.access.ClusterGroups != nil {
		c.Groups = s.access.ClusterGroups(ns, lbls)
	}
	return c
}

// decide answers whether id may do verb on an object of kind; obj, when the caller has it,
// lets cluster-scoped bindings apply to a Cluster.
func (s *Server) decide(id *auth.Identity, verb string, kind api.KindInfo, ns, name string, obj *api.Object) error {
	if id != nil && id.Admin {
		return nil
	}
	a := s.access.Authorizer
	if a == nil || id == nil {
		return forbidden(fmt.Sprintf("%s may not %s %s", userOf(id), verb, kind.Plural))
	}
	r := rbac.Request{Verb: verb, Kind: kind.Kind, Namespace: ns, Name: name}
	if kind.Kind == api.KindCluster && obj != nil {
		r.Cluster = s.clusterOf(obj.Metadata.Namespace, obj.Metadata.Name, obj.Metadata.Labels)
	}
	d := a.Decide(subjectOf(id), r)
	if d.Allowed {
		return nil
	}
	return forbidden(d.Reason())
}

func userOf(id *auth.Identity) string {
	if id == nil {
		return "anonymous"
	}
	return fmt.Sprintf("user %q", id.User)
}

// mayTry is the check made before a request's objects are read: whether any binding of the
// caller could allow verb on the kind at all. The decision proper is made on the object.
func (s *Server) mayTry(req *request, verb string) error {
	if s.decide(req.id, verb, req.kind, req.ns, req.name, nil) == nil {
		return nil
	}
	if a := s.access.Authorizer; a != nil && req.id != nil && a.MayAny(subjectOf(req.id), verb, req.kind.Kind) {
		return nil
	}
	return s.decide(req.id, verb, req.kind, req.ns, req.name, nil)
}

// authorizeObject decides verb on the request's object as stored, reading it when the
// decision depends on it (a Cluster's labels). It returns the object when it was read. A
// caller not allowed is told 403 whether or not the object exists, so that names cannot be
// probed.
func (s *Server) authorizeObject(req *request, verb string) (*api.Object, error) {
	err := s.decide(req.id, verb, req.kind, req.ns, req.name, nil)
	if err == nil || req.kind.Kind != api.KindCluster {
		return nil, err
	}
	obj, gerr := s.store.Get(req.r.Context(), req.key())
	if gerr != nil {
		return nil, err
	}
	if err := s.decide(req.id, verb, req.kind, req.ns, req.name, obj); err != nil {
		return nil, err
	}
	return obj, nil
}

// listFilter is how a list or watch is narrowed to what the caller may see: nil filter and
// nil error when everything in the request's scope may be seen; a filter when only some
// objects may; 403 when none could.
type listFilter struct {
	// keep decides object by object; nil keeps everything the store answers.
	keep func(ns, name string, lbls map[string]string) bool
	// sel narrows the store query itself (ANDed with the client's), when the caller's whole
	// view is one label selector: a member of env=dev clusters lists only those rows.
	sel labels.Selector
	// ns narrows the store query to one workspace, with sel.
	ns string
}

func (s *Server) listFilterFor(req *request, verb string) (*listFilter, error) {
	if s.decide(req.id, verb, req.kind, req.ns, "", nil) == nil {
		return nil, nil
	}
	a := s.access.Authorizer
	if a == nil || req.id == nil || !a.MayAny(subjectOf(req.id), verb, req.kind.Kind) {
		return nil, s.decide(req.id, verb, req.kind, req.ns, "", nil)
	}
	subj := subjectOf(req.id)
	if req.kind.Kind != api.KindCluster {
		kind := req.kind.Kind
		return &listFilter{keep: func(ns, name string, _ map[string]string) bool {
			return a.Decide(subj, rbac.Request{Verb: verb, Kind: kind, Namespace: ns, Name: name}).Allowed
		}}, nil
	}
	cf := a.ClusterFilter(subj, verb)
	f := &listFilter{keep: func(ns, name string, lbls map[string]string) bool {
		return cf.Matches(*s.clusterOf(ns, name, lbls))
	}}
	if es := cf.Entries(); len(es) == 1 && es[0].Names == nil && es[0].Set.Selector != nil {
		if sel, err := resource.Selector(es[0].Set.Selector); err == nil {
			// The store answers exactly the caller's view: nothing is left to filter.
			return &listFilter{sel: sel, ns: es[0].Set.Workspace}, nil
		}
	}
	return f, nil
}

// narrow applies f's store-side parts to a list or watch of the request; ok is false when
// the request's namespace and f's cannot overlap (the answer is empty).
func (f *listFilter) narrow(reqNS string, sel labels.Selector) (ns string, out labels.Selector, ok bool) {
	if f == nil || f.sel == nil {
		return reqNS, sel, true
	}
	ns = reqNS
	if f.ns != "" {
		if reqNS != "" && reqNS != f.ns {
			return "", nil, false
		}
		ns = f.ns
	}
	reqs, selectable := f.sel.Requirements()
	if !selectable {
		return "", nil, false
	}
	if sel == nil {
		sel = labels.Everything()
	}
	return ns, sel.Add(reqs...), true
}

// keepRaw decides on a stored object without decoding more than its metadata.
func (f *listFilter) keepRaw(raw json.RawMessage) bool {
	if f == nil || f.keep == nil {
		return true
	}
	var m struct {
		Metadata struct {
			Name      string            `json:"name"`
			Namespace string            `json:"namespace"`
			Labels    map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	if json.Unmarshal(raw, &m) != nil {
		return false
	}
	return f.keep(m.Metadata.Namespace, m.Metadata.Name, m.Metadata.Labels)
}

// outOfView reports whether an object a store watch narrowed by f's selector reports as
// deleted has in fact left the caller's view (it was relabelled): the event then carries what
// the object became, which is not the caller's to see.
func (f *listFilter) outOfView(raw json.RawMessage) bool {
	if f == nil || f.sel == nil {
		return false
	}
	var m struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	return json.Unmarshal(raw, &m) != nil || !f.sel.Matches(labels.Set(m.Metadata.Labels))
}

// tombstone is what a caller is told of an object that left its view: which one, no more.
func tombstone(o *api.Object) *api.Object {
	return &api.Object{TypeMeta: o.TypeMeta, Metadata: api.ObjectMeta{Name: o.Metadata.Name, Namespace: o.Metadata.Namespace,
		UID: o.Metadata.UID, ResourceVersion: o.Metadata.ResourceVersion}}
}

func (f *listFilter) keepObject(o *api.Object) bool {
	return f == nil || f.keep == nil || f.keep(o.Metadata.Namespace, o.Metadata.Name, o.Metadata.Labels)
}

// decideWrite decides a create, update or delete of obj (the new object, or the stored one
// for a delete). An update is decided on the object as stored and as it would be: a cluster
// owner of env=dev may not relabel a cluster into env=prod, nor take one out of it.
func (s *Server) decideWrite(req *request, verb string, cur, next *api.Object) error {
	for _, o := range []*api.Object{cur, next} {
		if o == nil {
			continue
		}
		if err := s.decide(req.id, verb, req.kind, o.Metadata.Namespace, o.Metadata.Name, o); err != nil {
			return err
		}
	}
	return nil
}

// canI answers POST api.PathCanI: may the caller, or with As the named user, do a verb on a
// kind. Asking for another user needs the right to list role bindings everywhere, since
// those answer the question anyway.
func (s *Server) canI(w http.ResponseWriter, r *http.Request) {
	id, err := s.auth.Authenticate(r.Context(), auth.BearerToken(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var q api.AccessReview
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&q); err != nil {
		s.writeError(w, r, statusErr(http.StatusBadRequest, api.ReasonBadRequest, "reading the question: "+err.Error()))
		return
	}
	k, ok := api.LookupKind(q.Kind)
	if !ok {
		s.writeError(w, r, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("unknown kind %q", q.Kind)))
		return
	}
	switch q.Verb {
	case api.VerbGet, api.VerbList, api.VerbWatch, api.VerbCreate, api.VerbUpdate, api.VerbDelete:
	default:
		s.writeError(w, r, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("unknown verb %q (get, list, watch, create, update or delete)", q.Verb)))
		return
	}
	if k.Global {
		q.Namespace = ""
	} else if q.Namespace == "" && q.Verb != api.VerbList && q.Verb != api.VerbWatch {
		q.Namespace = api.DefaultNamespace
	}
	who := id
	if q.As != "" {
		rolebindings, _ := api.LookupKind(api.KindRoleBinding)
		if err := s.decide(id, api.VerbList, rolebindings, "", "", nil); err != nil {
			s.writeError(w, r, forbidden(fmt.Sprintf("%s may not ask for another user: that needs the right to list role bindings everywhere", userOf(id))))
			return
		}
		who, err = s.userIdentity(r.Context(), q.As)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	var obj *api.Object
	if k.Kind == api.KindCluster && q.Name != "" {
		if o, err := s.store.Get(r.Context(), store.Key{Kind: k.Kind, Namespace: q.Namespace, Name: q.Name}); err == nil {
			obj = o
		}
	}
	ans := api.AccessReview{Verb: q.Verb, Kind: k.Kind, Namespace: q.Namespace, Name: q.Name, As: q.As, Allowed: true}
	if err := s.decide(who, q.Verb, k, q.Namespace, q.Name, obj); err != nil {
		ans.Allowed = false
		ans.Reason = err.Error()
		// A list or watch some bindings allow in part is answered as the API answers it:
		// with what those bindings cover (a member of env=dev clusters lists those).
		if a := s.access.Authorizer; (q.Verb == api.VerbList || q.Verb == api.VerbWatch) && q.Name == "" && a != nil && a.MayAny(subjectOf(who), q.Verb, k.Kind) {
			ans.Allowed = true
			ans.Reason = fmt.Sprintf("allowed in part: the %s shows only the %s that the bindings of user %q cover", q.Verb, k.Plural, who.User)
		}
	} else if who.Admin {
		ans.Reason = "an admin token may do anything"
	} else if a := s.access.Authorizer; a != nil {
		r := rbac.Request{Verb: q.Verb, Kind: k.Kind, Namespace: q.Namespace, Name: q.Name}
		if obj != nil {
			r.Cluster = s.clusterOf(obj.Metadata.Namespace, obj.Metadata.Name, obj.Metadata.Labels)
		}
		ans.Reason = a.Decide(subjectOf(who), r).Reason()
	}
	writeBody(w, http.StatusOK, ans)
}

// userIdentity is the identity a user's login would have: the groups its provider last
// reported. A user that does not exist has no groups and no bindings of its own, and is
// answered as such rather than with 404, which would let names be probed cheaply.
func (s *Server) userIdentity(ctx context.Context, name string) (*auth.Identity, error) {
	if msg := resource.UserNameProblem(name); msg != "" {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, "user name: "+msg)
	}
	id := &auth.Identity{User: name}
	o, err := s.store.Get(ctx, store.Key{Kind: api.KindUser, Name: name})
	if err != nil {
		return id, nil
	}
	var spec api.UserSpec
	if json.Unmarshal(o.Spec, &spec) == nil {
		id.Groups = spec.Groups
	}
	return id, nil
}
