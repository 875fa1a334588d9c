package apiserver

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/store"
)

func statusErr(code int, reason, msg string) *api.Status {
	return &api.Status{TypeMeta: api.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure", Code: code, Reason: reason, Message: msg}
}

// toStatus maps an error to the Status a client sees. Unexpected errors are reported as
// internal without their text, which may name database details.
func toStatus(err error) *api.Status {
	var st *api.Status
	switch {
	case errors.As(err, &st):
		if st.Kind == "" {
			st.APIVersion, st.Kind, st.Status = "v1", "Status", "Failure"
		}
		return st
	case errors.Is(err, auth.ErrUnauthenticated):
		return statusErr(http.StatusUnauthorized, api.ReasonUnauthorized, "Unauthorized: "+strings.TrimPrefix(err.Error(), auth.ErrUnauthenticated.Error()+": "))
	case errors.Is(err, auth.ErrForbidden):
		return statusErr(http.StatusForbidden, api.ReasonForbidden, err.Error())
	case errors.Is(err, store.ErrNotFound):
		return statusErr(http.StatusNotFound, api.ReasonNotFound, err.Error())
	case errors.Is(err, store.ErrAlreadyExists):
		return statusErr(http.StatusConflict, api.ReasonAlreadyExists, err.Error())
	case errors.Is(err, store.ErrConflict):
		return statusErr(http.StatusConflict, api.ReasonConflict, fmt.Sprintf("%v: the object has been modified; read it again and apply your changes to the latest version", err))
	case errors.Is(err, store.ErrCompacted):
		return statusErr(http.StatusGone, api.ReasonGone, "too old resource version: "+err.Error())
	case errors.Is(err, store.ErrBehind):
		return statusErr(http.StatusGone, api.ReasonGone, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, store.ErrClosed):
		return statusErr(http.StatusServiceUnavailable, api.ReasonUnavailable, "the server is busy or shutting down; try again")
	}
	return statusErr(http.StatusInternalServerError, api.ReasonInternal, "internal error")
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	st := toStatus(err)
	if st.Code >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, st.Code, st)
}

// WriteError writes err as a Status, for other handlers of the server.
func WriteError(w http.ResponseWriter, err error) {
	st := toStatus(err)
	writeJSON(w, st.Code, st)
}

func writeJSON(w http.ResponseWriter, code int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	return json.NewEncoder(w).Encode(v)
}

// NewUID returns a random UUID for a new object.
func NewUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
