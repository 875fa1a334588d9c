package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"flotilla.dev/api"
)

// The access pages (users, roles, role bindings, projects) are pages of the API's own lists,
// read and changed as the user: the API decides, validates and audits. Controls are shown
// only when the API's can-i says the user may use them; the API still decides each change.

// objectPath is the API path of a kind's collection (plural) in ns ("" for global kinds), or
// of one object when name is set.
func objectPath(plural, ns, name string) string {
	p := "/apis/" + api.Group + "/" + api.Version + "/"
	if ns != "" {
		p += "namespaces/" + url.PathEscape(ns) + "/"
	}
	p += plural
	if name != "" {
		p += "/" + url.PathEscape(name)
	}
	return p
}

// listPage reads one page of a collection as the user: its items and the link to the next
// page (the API's continue token), or the API's answer when it refused.
func (h *Handler) listPage(r *http.Request, u *user, plural, ns, base string) ([]api.Object, string, *apiResult) {
	q := url.Values{"limit": {"50"}}
	if c := r.URL.Query().Get("continue"); c != "" {
		if len(c) > 1024 {
			return nil, "", &apiResult{code: http.StatusBadRequest, body: []byte("The page token is not valid; start from the first page.")}
		}
		q.Set("continue", c)
	}
	res := h.call(r, u.token, http.MethodGet, objectPath(plural, ns, "")+"?"+q.Encode(), "", nil)
	if res.code != http.StatusOK {
		return nil, "", &res
	}
	var list struct {
		Metadata api.ListMeta `json:"metadata"`
		Items    []api.Object `json:"items"`
	}
	if err := json.Unmarshal(res.body, &list); err != nil {
		return nil, "", &apiResult{code: http.StatusInternalServerError, body: []byte("The list could not be read.")}
	}
	next := ""
	if list.Metadata.Continue != "" {
		next = base + "?" + url.Values{"continue": {list.Metadata.Continue}}.Encode()
	}
	return list.Items, next, nil
}

// canI asks the API whether the user may do verb on kind (in ns); a failed question is a no.
func (h *Handler) canI(r *http.Request, u *user, verb, kind, ns string) bool {
	body, _ := json.Marshal(api.AccessReview{Verb: verb, Kind: kind, Namespace: ns})
	res := h.call(r, u.token, http.MethodPost, api.PathCanI, "application/json", body)
	var rev api.AccessReview
	return res.code == http.StatusOK && json.Unmarshal(res.body, &rev) == nil && rev.Allowed
}

// refusal is how a failed API call is shown: the API's own reason.
func refusal(res apiResult) string {
	switch res.code {
	case http.StatusForbidden:
		return "Refused: " + res.message()
	case http.StatusNotFound:
		return "Not found: " + res.message()
	}
	return res.message()
}

// create posts obj through the API as the user.
func (h *Handler) create(r *http.Request, u *user, plural, ns string, obj api.Object) apiResult {
	body, _ := json.Marshal(obj)
	return h.call(r, u.token, http.MethodPost, objectPath(plural, ns, ""), "application/json", body)
}

func newObject(kind, ns, name string, spec any) api.Object {
	b, _ := json.Marshal(spec)
	return api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: kind},
		Metadata: api.ObjectMeta{Name: name, Namespace: ns}, Spec: b}
}

// formLimit bounds the forms of the access pages.
const formLimit = 64 << 10

// --- Users ---

type userRow struct {
	Name, DisplayName, Provider string
	Disabled                    bool
	Groups                      []string
	LastLogin                   string
}

type usersData struct {
	Rows          []userRow
	Next          string
	Create, Edit  bool
	Name, Display string
}

func (h *Handler) users(w http.ResponseWriter, r *http.Request, u *user) {
	h.usersPage(w, r, u, http.StatusOK, "", flashes[r.URL.Query().Get("done")], usersData{})
}

func (h *Handler) usersPage(w http.ResponseWriter, r *http.Request, u *user, code int, errMsg, flash string, d usersData) {
	items, next, fail := h.listPage(r, u, "users", "", "/users")
	if fail != nil {
		h.errorPage(w, r, u, fail.code, refusal(*fail))
		return
	}
	d.Next = next
	for _, o := range items {
		var spec api.UserSpec
		var st api.UserStatus
		json.Unmarshal(o.Spec, &spec)
		json.Unmarshal(o.Status, &st)
		row := userRow{Name: o.Metadata.Name, DisplayName: spec.DisplayName, Provider: spec.Provider, Disabled: spec.Disabled, Groups: spec.Groups}
		if row.Provider == "" {
			row.Provider = api.ProviderLocal
		}
		if st.LastLogin != nil {
			row.LastLogin = st.LastLogin.UTC().Format("2006-01-02 15:04 MST")
		}
		d.Rows = append(d.Rows, row)
	}
	d.Create = h.canI(r, u, api.VerbCreate, api.KindUser, "")
	d.Edit = h.canI(r, u, api.VerbUpdate, api.KindUser, "")
	h.render(w, r, code, "users", page{Title: "Users", User: u, Nav: "users", Error: errMsg, Flash: flash, Data: d})
}

// createUser makes a local user and sets its password, both through the API. A password the
// API refuses removes the user again, so that no user is left without one.
func (h *Handler) createUser(w http.ResponseWriter, r *http.Request, u *user) {
	r.Body = http.MaxBytesReader(w, r.Body, formLimit)
	name := strings.TrimSpace(r.PostFormValue("name"))
	display := strings.TrimSpace(r.PostFormValue("displayName"))
	pw := r.PostFormValue("password")
	d := usersData{Name: name, Display: display}
	if name == "" || pw == "" {
		h.usersPage(w, r, u, http.StatusBadRequest, "A user needs a name and a password.", "", d)
		return
	}
	if pw != r.PostFormValue("password2") {
		h.usersPage(w, r, u, http.StatusBadRequest, "The two passwords differ.", "", d)
		return
	}
	res := h.create(r, u, "users", "", newObject(api.KindUser, "", name, api.UserSpec{DisplayName: display, Provider: api.ProviderLocal}))
	if res.code != http.StatusCreated && res.code != http.StatusOK {
		h.usersPage(w, r, u, res.code, refusal(res), "", d)
		return
	}
	body, _ := json.Marshal(api.SetPasswordRequest{Password: pw})
	res = h.call(r, u.token, http.MethodPut, api.PathUserPassword+"/"+url.PathEscape(name)+"/password", "application/json", body)
	if res.code != http.StatusOK && res.code != http.StatusNoContent {
		del := h.call(r, u.token, http.MethodDelete, objectPath("users", "", name), "", nil)
		msg := "The password was refused, so the user was not made: " + res.message()
		if del.code != http.StatusOK && del.code != http.StatusNoContent {
			msg = "The user " + name + " was made but its password was refused (" + res.message() + "); set one with flotilla user passwd, or delete the user."
		}
		h.usersPage(w, r, u, res.code, msg, "", d)
		return
	}
	http.Redirect(w, r, "/users?done=user-created", http.StatusSeeOther)
}

// userAction disables or enables a user with a merge patch through the API.
func (h *Handler) userAction(w http.ResponseWriter, r *http.Request, u *user) {
	name, action := r.PathValue("name"), r.PathValue("action")
	if action != "disable" && action != "enable" {
		h.errorPage(w, r, u, http.StatusNotFound, "No such action.")
		return
	}
	body, _ := json.Marshal(map[string]any{"spec": map[string]any{"disabled": action == "disable"}})
	res := h.call(r, u.token, http.MethodPatch, objectPath("users", "", name), "application/merge-patch+json", body)
	if res.code != http.StatusOK {
		h.usersPage(w, r, u, res.code, refusal(res), "", usersData{})
		return
	}
	http.Redirect(w, r, "/users?done=user-"+action+"d", http.StatusSeeOther)
}

// --- Roles ---

type roleRow struct {
	Name    string
	Spec    api.RoleSpec
	Builtin bool
}

type rolesData struct {
	Rows []roleRow
	Next string
}

func roleOf(o api.Object) roleRow {
	row := roleRow{Name: o.Metadata.Name}
	json.Unmarshal(o.Spec, &row.Spec)
	var st api.RoleStatus
	json.Unmarshal(o.Status, &st)
	row.Builtin = st.Builtin
	return row
}

func (h *Handler) roles(w http.ResponseWriter, r *http.Request, u *user) {
	items, next, fail := h.listPage(r, u, "roles", "", "/roles")
	if fail != nil {
		h.errorPage(w, r, u, fail.code, refusal(*fail))
		return
	}
	d := rolesData{Next: next}
	for _, o := range items {
		d.Rows = append(d.Rows, roleOf(o))
	}
	h.render(w, r, http.StatusOK, "roles", page{Title: "Roles", User: u, Nav: "roles", Data: d})
}

func (h *Handler) role(w http.ResponseWriter, r *http.Request, u *user) {
	res := h.call(r, u.token, http.MethodGet, objectPath("roles", "", r.PathValue("name")), "", nil)
	if res.code != http.StatusOK {
		h.errorPage(w, r, u, res.code, refusal(res))
		return
	}
	var o api.Object
	if err := json.Unmarshal(res.body, &o); err != nil {
		h.errorPage(w, r, u, http.StatusInternalServerError, "The role could not be read.")
		return
	}
	h.render(w, r, http.StatusOK, "role", page{Title: "Role " + o.Metadata.Name, User: u, Nav: "roles", Data: roleOf(o)})
}

// --- Role bindings ---

type bindingRow struct {
	Name, Subject, Role, Scope string
}

type bindingsData struct {
	Rows           []bindingRow
	Next           string
	Create, Delete bool
	Form           bindingForm
}

type bindingForm struct {
	Name, SubjectKind, Subject, Role, ScopeKind, Scope, Workspace string
}

func (h *Handler) bindings(w http.ResponseWriter, r *http.Request, u *user) {
	h.bindingsPage(w, r, u, http.StatusOK, "", flashes[r.URL.Query().Get("done")], bindingForm{SubjectKind: api.SubjectUser, ScopeKind: "global"})
}

func (h *Handler) bindingsPage(w http.ResponseWriter, r *http.Request, u *user, code int, errMsg, flash string, f bindingForm) {
	items, next, fail := h.listPage(r, u, "rolebindings", "", "/rolebindings")
	if fail != nil {
		h.errorPage(w, r, u, fail.code, refusal(*fail))
		return
	}
	d := bindingsData{Next: next, Form: f}
	for _, o := range items {
		var spec api.RoleBindingSpec
		json.Unmarshal(o.Spec, &spec)
		d.Rows = append(d.Rows, bindingRow{Name: o.Metadata.Name, Subject: spec.Subject.Kind + " " + spec.Subject.Name, Role: spec.RoleRef, Scope: spec.Scope.String()})
	}
	d.Create = h.canI(r, u, api.VerbCreate, api.KindRoleBinding, "")
	d.Delete = h.canI(r, u, api.VerbDelete, api.KindRoleBinding, "")
	h.render(w, r, code, "rolebindings", page{Title: "Role bindings", User: u, Nav: "rolebindings", Error: errMsg, Flash: flash, Data: d})
}

// bindingScope turns the form's scope into the API's; the API validates the rest (that the
// role exists and may be bound there).
func bindingScope(f bindingForm) (api.BindingScope, error) {
	s := api.BindingScope{Workspace: f.Workspace}
	switch f.ScopeKind {
	case "global":
		return api.BindingScope{Global: true}, nil
	case "workspace":
		if f.Workspace == "" {
			return s, fmt.Errorf("a workspace scope needs the workspace")
		}
	case "cluster":
		s.Cluster = f.Scope
	case "clustergroup":
		s.ClusterGroup = f.Scope
	case "project":
		s = api.BindingScope{Project: f.Scope}
	case "selector":
		sel := map[string]string{}
		for _, kv := range strings.Split(f.Scope, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok || k == "" {
				return s, fmt.Errorf("write the selector as KEY=VALUE,KEY=VALUE")
			}
			sel[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
		s.ClusterSelector = &api.LabelSelector{MatchLabels: sel}
	default:
		return s, fmt.Errorf("choose a scope: global, workspace, cluster, clustergroup, selector or project")
	}
	if f.ScopeKind != "workspace" && f.Scope == "" {
		return s, fmt.Errorf("the %s scope needs a value", f.ScopeKind)
	}
	return s, nil
}

func (h *Handler) createBinding(w http.ResponseWriter, r *http.Request, u *user) {
	r.Body = http.MaxBytesReader(w, r.Body, formLimit)
	f := bindingForm{}
	for p, v := range map[*string]string{&f.Name: "name", &f.SubjectKind: "subjectKind", &f.Subject: "subject", &f.Role: "role",
		&f.ScopeKind: "scopeKind", &f.Scope: "scope", &f.Workspace: "workspace"} {
		*p = strings.TrimSpace(r.PostFormValue(v))
	}
	if f.SubjectKind != api.SubjectUser && f.SubjectKind != api.SubjectGroup {
		h.bindingsPage(w, r, u, http.StatusBadRequest, "The subject is a User or a Group.", "", f)
		return
	}
	scope, err := bindingScope(f)
	if err != nil {
		h.bindingsPage(w, r, u, http.StatusBadRequest, err.Error(), "", f)
		return
	}
	if f.Name == "" {
		f.Name = strings.ToLower(f.Subject + "-" + f.Role)
	}
	spec := api.RoleBindingSpec{Subject: api.Subject{Kind: f.SubjectKind, Name: f.Subject}, RoleRef: f.Role, Scope: scope}
	res := h.create(r, u, "rolebindings", "", newObject(api.KindRoleBinding, "", f.Name, spec))
	if res.code != http.StatusCreated && res.code != http.StatusOK {
		h.bindingsPage(w, r, u, res.code, refusal(res), "", f)
		return
	}
	http.Redirect(w, r, "/rolebindings?done=binding-created", http.StatusSeeOther)
}

func (h *Handler) deleteBinding(w http.ResponseWriter, r *http.Request, u *user) {
	res := h.call(r, u.token, http.MethodDelete, objectPath("rolebindings", "", r.PathValue("name")), "", nil)
	if res.code != http.StatusOK && res.code != http.StatusNoContent {
		h.bindingsPage(w, r, u, res.code, refusal(res), "", bindingForm{SubjectKind: api.SubjectUser, ScopeKind: "global"})
		return
	}
	http.Redirect(w, r, "/rolebindings?done=binding-deleted", http.StatusSeeOther)
}

// --- Projects ---

type quotaRow struct{ Resource, Used, Hard string }

type projectRow struct {
	Name, DisplayName string
	Namespaces        []string
	Quota             []quotaRow
	OverQuota         string
}

type projectsData struct {
	Rows []projectRow
	Next string
}

func (h *Handler) projects(w http.ResponseWriter, r *http.Request, u *user) {
	items, next, fail := h.listPage(r, u, "projects", "", "/projects")
	if fail != nil {
		h.errorPage(w, r, u, fail.code, refusal(*fail))
		return
	}
	d := projectsData{Next: next}
	for _, o := range items {
		var spec api.ProjectSpec
		var st api.ProjectStatus
		json.Unmarshal(o.Spec, &spec)
		json.Unmarshal(o.Status, &st)
		row := projectRow{Name: o.Metadata.Name, DisplayName: spec.DisplayName}
		for _, n := range spec.Namespaces {
			row.Namespaces = append(row.Namespaces, n.Name)
		}
		res := map[string]bool{}
		if spec.Quota != nil {
			for k := range spec.Quota.Hard {
				res[k] = true
			}
		}
		for k := range st.Used {
			res[k] = true
		}
		for k := range res {
			q := quotaRow{Resource: k, Used: st.Used[k]}
			if spec.Quota != nil {
				q.Hard = spec.Quota.Hard[k]
			}
			row.Quota = append(row.Quota, q)
		}
		sort.Slice(row.Quota, func(i, j int) bool { return row.Quota[i].Resource < row.Quota[j].Resource })
		for _, c := range st.Conditions {
			if c.Type == api.ConditionOverQuota && c.Status == "True" {
				row.OverQuota = c.Message
				if row.OverQuota == "" {
					row.OverQuota = "over quota"
				}
			}
		}
		d.Rows = append(d.Rows, row)
	}
	h.render(w, r, http.StatusOK, "projects", page{Title: "Projects", User: u, Nav: "projects", Data: d})
}
