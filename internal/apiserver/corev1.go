package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
	"flotilla.dev/internal/resource"
)

// This file serves Secrets in Kubernetes' core v1 shape (type, data, stringData at the top
// level) under /api/v1, over the same handlers as Flotilla's own Secret: request bodies are
// turned into Flotilla's shape on the way in, and every object in a response back into
// Kubernetes' on the way out.

func (s *Server) registerCoreV1(mux interface {
	HandleFunc(string, func(http.ResponseWriter, *http.Request))
}) {
	base := "/api/v1/namespaces/{ns}/secrets"
	mux.HandleFunc("GET /api/v1/secrets", s.coreV1(s.kubeList))
	mux.HandleFunc("GET "+base, s.coreV1(s.kubeList))
	mux.HandleFunc("POST "+base, s.coreV1(s.create))
	mux.HandleFunc("GET "+base+"/{name}", s.coreV1(s.kubeGet))
	mux.HandleFunc("PUT "+base+"/{name}", s.coreV1(s.update))
	mux.HandleFunc("PATCH "+base+"/{name}", s.coreV1(s.patch))
	mux.HandleFunc("DELETE "+base+"/{name}", s.coreV1(s.delete))
}

func isCoreV1(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/api/v1/") }

func (s *Server) coreV1(fn func(*request) error) http.HandlerFunc {
	h := s.handle(fn)
	return func(w http.ResponseWriter, r *http.Request) {
		r.SetPathValue("plural", "secrets")
		if (r.Method == http.MethodPost || r.Method == http.MethodPut) && r.Body != nil {
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, resource.MaxObjectBytes))
			if err == nil && strings.Contains(r.Header.Get("Content-Type"), "yaml") {
				body, err = yaml.YAMLToJSON(body)
			}
			var obj *api.Object
			if err == nil {
				obj, err = api.SecretFromCoreV1(body)
			}
			if err == nil {
				body, err = json.Marshal(obj)
			}
			if err != nil {
				WriteError(w, statusErr(http.StatusBadRequest, api.ReasonBadRequest, err.Error()))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.Header.Set("Content-Type", "application/json")
		}
		cw := &lineWriter{w: w, convert: coreLine}
		h(cw, r)
		cw.flush(true)
	}
}

// coreLine converts one JSON document; what is not a Secret passes unchanged.
func coreLine(line []byte) []byte {
	var head struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Items      []json.RawMessage `json:"items"`
		Type       string            `json:"type"`
		Object     json.RawMessage   `json:"object"`
	}
	if json.Unmarshal(line, &head) != nil {
		return line
	}
	switch {
	case head.Kind == api.KindSecret && head.APIVersion == api.APIVersion:
		var o api.Object
		if json.Unmarshal(line, &o) != nil {
			return line
		}
		v1, err := o.CoreV1()
		if err != nil {
			return line
		}
		out, _ := json.Marshal(v1)
		return out
	case head.Kind == api.KindSecret+"List":
		var l map[string]json.RawMessage
		json.Unmarshal(line, &l)
		items := make([]json.RawMessage, len(head.Items))
		for i, it := range head.Items {
			items[i] = coreLine(it)
		}
		l["items"], _ = json.Marshal(items)
		l["apiVersion"] = json.RawMessage(`"v1"`)
		out, _ := json.Marshal(l)
		return out
	case head.Kind == "" && head.Type != "" && len(head.Object) > 0:
		out, _ := json.Marshal(api.WatchEvent{Type: head.Type, Object: coreLine(head.Object)})
		return out
	}
	return line
}

// lastAppliedAnnotation is where `kubectl apply` keeps the configuration it applied.
const lastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// secretHooks keeps a Secret's values out of the annotation kubectl apply writes: the
// values there are replaced by api.SecretRedacted before anything is stored.
type secretHooks struct{ inner Hooks }

func (s *Server) wrapSecretHooks() {
	if _, done := s.hooks[api.KindSecret].(secretHooks); !done {
		s.hooks[api.KindSecret] = secretHooks{inner: s.hooks[api.KindSecret]}
	}
}

func (h secretHooks) BeforeCreate(ctx context.Context, obj *api.Object, dry bool) error {
	if err := redactLastApplied(obj); err != nil {
		return err
	}
	if h.inner == nil {
		return nil
	}
	return h.inner.BeforeCreate(ctx, obj, dry)
}

func (h secretHooks) AfterCreate(ctx context.Context, obj *api.Object) error {
	if h.inner == nil {
		return nil
	}
	return h.inner.AfterCreate(ctx, obj)
}

func (h secretHooks) BeforeUpdate(ctx context.Context, old, obj *api.Object, dry bool) error {
	if err := redactLastApplied(obj); err != nil {
		return err
	}
	if h.inner == nil {
		return nil
	}
	return h.inner.BeforeUpdate(ctx, old, obj, dry)
}

func (h secretHooks) FilterResponse(obj *api.Object) {
	if f, ok := h.inner.(ResponseFilter); ok {
		f.FilterResponse(obj)
	}
}

func redactLastApplied(obj *api.Object) error {
	la, ok := obj.Metadata.Annotations[lastAppliedAnnotation]
	if !ok {
		return nil
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(la), &cfg); err != nil {
		return resource.Invalid(obj.Kind, obj.Metadata.Name, []api.StatusCause{{Field: "metadata.annotations." + lastAppliedAnnotation, Message: "must be a JSON object"}})
	}
	redact := func(m map[string]any, data string) {
		for f, marker := range map[string]string{"data": data, "stringData": api.SecretRedacted} {
			if vals, ok := m[f].(map[string]any); ok {
				for k := range vals {
					vals[k] = marker
				}
			}
		}
	}
	// Kubernetes' shape keeps data base64-encoded; Flotilla's spec takes the marker as is.
	redact(cfg, api.CoreV1Redacted)
	if spec, ok := cfg["spec"].(map[string]any); ok {
		redact(spec, api.SecretRedacted)
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		return errors.New("encoding the last applied configuration")
	}
	obj.Metadata.Annotations[lastAppliedAnnotation] = string(out)
	return nil
}

// groupWriter shows objects served under Fleet's group in that group, so that a client
// that applied a fleet.cattle.io manifest reads back what it wrote (kubectl's apply would
// otherwise see a changed apiVersion every time and report "configured").
func groupWriter(w http.ResponseWriter, r *http.Request) (http.ResponseWriter, func()) {
	if !strings.HasPrefix(r.URL.Path, "/apis/"+api.FleetGroup+"/") {
		return w, func() {}
	}
	lw := &lineWriter{w: w, convert: func(line []byte) []byte {
		return bytes.ReplaceAll(line, []byte(`"apiVersion":"`+api.APIVersion+`"`), []byte(`"apiVersion":"`+api.FleetAPIVersion+`"`))
	}}
	return lw, func() { lw.flush(true) }
}

// lineWriter passes a response through convert one line (one JSON document or watch
// event) at a time.
type lineWriter struct {
	w       http.ResponseWriter
	buf     []byte
	convert func([]byte) []byte
}

func (c *lineWriter) Header() http.Header  { return c.w.Header() }
func (c *lineWriter) WriteHeader(code int) { c.w.WriteHeader(code) }

func (c *lineWriter) Write(p []byte) (int, error) {
	c.buf = append(c.buf, p...)
	c.flush(false)
	return len(p), nil
}

func (c *lineWriter) Flush() {
	c.flush(false)
	if f, ok := c.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (c *lineWriter) flush(all bool) {
	for {
		i := bytes.IndexByte(c.buf, '\n')
		if i < 0 {
			break
		}
		c.w.Write(append(c.convert(c.buf[:i]), '\n'))
		c.buf = c.buf[i+1:]
	}
	if all && len(c.buf) > 0 {
		c.w.Write(c.convert(c.buf))
		c.buf = nil
	}
}
