package web

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"flotilla.dev/api"
)

// Registration tokens are made through the API as the user; the token's value is in the
// create call's answer only, so the page that shows it (with the agent's command) is the
// create call's own answer and is never stored or redirected to.

type tokenRow struct {
	Name, Labels, Cluster, Expires string
	Uses, MaxUses                  int
}

type registrationData struct {
	Namespace string
	Rows      []tokenRow
	Next      string
	Create    bool
	Form      tokenForm
	// Command is the agent's command with the new token, shown once.
	Command string
	Created string
	// Guessed is the address the command names when the server has no external URL: the one
	// the browser used, which agents may not reach.
	Guessed string
}

type tokenForm struct {
	Name, TTL, MaxUses, Labels, Cluster string
}

func (h *Handler) registration(w http.ResponseWriter, r *http.Request, u *user) {
	h.registrationPage(w, r, u, http.StatusOK, "", registrationData{Form: tokenForm{TTL: "24h"}})
}

func (h *Handler) registrationPage(w http.ResponseWriter, r *http.Request, u *user, code int, errMsg string, d registrationData) {
	d.Namespace = r.FormValue("ns")
	if d.Namespace == "" {
		d.Namespace = api.DefaultNamespace
	}
	if len(d.Namespace) > 253 {
		h.errorPage(w, r, u, http.StatusBadRequest, "The workspace name is too long.")
		return
	}
	items, next, fail := h.listPage(r, u, "registrationtokens", d.Namespace, "/registration")
	if fail != nil {
		h.errorPage(w, r, u, fail.code, refusal(*fail))
		return
	}
	if next != "" && d.Namespace != api.DefaultNamespace {
		next += "&ns=" + urlQueryEscape(d.Namespace)
	}
	d.Next = next
	for _, o := range items {
		var spec api.RegistrationTokenSpec
		var st api.RegistrationTokenStatus
		json.Unmarshal(o.Spec, &spec)
		json.Unmarshal(o.Status, &st)
		row := tokenRow{Name: o.Metadata.Name, Labels: api.LabelString(spec.Labels), Cluster: spec.ClusterName, Uses: st.Uses, MaxUses: spec.MaxUses, Expires: "never"}
		if st.Expires != nil {
			row.Expires = st.Expires.UTC().Format("2006-01-02 15:04 MST")
		}
		d.Rows = append(d.Rows, row)
	}
	d.Create = h.canI(r, u, api.VerbCreate, api.KindRegistrationToken, d.Namespace)
	h.render(w, r, code, "registration", page{Title: "Register clusters", User: u, Nav: "registration", Error: errMsg, Data: d})
}

// hostPattern is what a server address taken from the request may look like, so that the
// command shown for copying into a shell holds nothing a shell would interpret.
var hostPattern = regexp.MustCompile(`^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$`)

// agentCommand is the command that starts an agent registering with token.
func (h *Handler) agentCommand(r *http.Request, token, cluster string) string {
	server := h.cfg.ServerURL
	if server == "" {
		host := r.Host
		if !hostPattern.MatchString(host) {
			host = "SERVER:8443"
		}
		server = "https://" + host
	}
	sum := h.cfg.CAChecksum
	if sum == "" {
		sum = "<the CA checksum printed by flotilla server>"
	}
	cmd := fmt.Sprintf("flotilla-agent --server %s --ca-checksum %s --token %s", shellQuote(server), shellQuote(sum), shellQuote(token))
	if cluster != "" {
		cmd += " --cluster-name " + shellQuote(cluster)
	}
	return cmd
}

// shellQuote quotes s for a POSIX shell unless it is made of characters no shell interprets.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/=,@[]") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (h *Handler) createToken(w http.ResponseWriter, r *http.Request, u *user) {
	r.Body = http.MaxBytesReader(w, r.Body, formLimit)
	f := tokenForm{Name: strings.TrimSpace(r.PostFormValue("name")), TTL: strings.TrimSpace(r.PostFormValue("ttl")),
		MaxUses: strings.TrimSpace(r.PostFormValue("maxUses")), Labels: strings.TrimSpace(r.PostFormValue("labels")),
		Cluster: strings.TrimSpace(r.PostFormValue("clusterName"))}
	d := registrationData{Form: f}
	spec := api.RegistrationTokenSpec{TTL: f.TTL, ClusterName: f.Cluster}
	if f.MaxUses != "" {
		n, err := strconv.Atoi(f.MaxUses)
		if err != nil || n < 0 {
			h.registrationPage(w, r, u, http.StatusBadRequest, "Max uses is a number (0: unlimited).", d)
			return
		}
		spec.MaxUses = n
	}
	if f.Labels != "" {
		spec.Labels = map[string]string{}
		for _, kv := range strings.Split(f.Labels, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok || strings.TrimSpace(k) == "" {
				h.registrationPage(w, r, u, http.StatusBadRequest, "Write the labels as KEY=VALUE,KEY=VALUE.", d)
				return
			}
			spec.Labels[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	if f.Name == "" {
		b := make([]byte, 5)
		rand.Read(b)
		f.Name = fmt.Sprintf("token-%x", b)
	}
	ns := r.FormValue("ns")
	if ns == "" {
		ns = api.DefaultNamespace
	}
	res := h.create(r, u, "registrationtokens", ns, newObject(api.KindRegistrationToken, ns, f.Name, spec))
	if res.code != http.StatusCreated && res.code != http.StatusOK {
		h.registrationPage(w, r, u, res.code, refusal(res), d)
		return
	}
	var obj api.Object
	var st api.RegistrationTokenStatus
	if json.Unmarshal(res.body, &obj) != nil || json.Unmarshal(obj.Status, &st) != nil || st.Token == "" {
		h.registrationPage(w, r, u, http.StatusInternalServerError, "The token was made but the server sent no value; delete it and make another.", d)
		return
	}
	d = registrationData{Form: tokenForm{TTL: "24h"}, Created: obj.Metadata.Name, Command: h.agentCommand(r, st.Token, spec.ClusterName)}
	if h.cfg.ServerURL == "" {
		d.Guessed = r.Host
	}
	h.registrationPage(w, r, u, http.StatusCreated, "", d)
}
