package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/users"
)

// maxAuthBody bounds the bodies of the login, password and token requests.
const maxAuthBody = 16 << 10

// RegisterHandlers adds the login, password and token API to mux:
//
//	POST   api.PathLogin                     log in with a password provider
//	GET    api.PathWhoAmI                    the caller's identity
//	PUT    api.PathUserPassword/NAME/password set a local user's password
//	GET    api.PathTokens                    the caller's tokens (admins: all)
//	POST   api.PathTokens                    a new API token for the caller
//	DELETE api.PathTokens/ID                 revoke a token (one's own; admins: any)
func (a *Authenticator) RegisterHandlers(mux *http.ServeMux) {
	mux.HandleFunc("POST "+api.PathLogin, a.handleLogin)
	mux.HandleFunc("GET "+api.PathWhoAmI, a.authenticated(func(w http.ResponseWriter, r *http.Request, id *Identity) {
		writeJSON(w, http.StatusOK, api.WhoAmI{User: id.User, Groups: id.Groups, Admin: a.login.isAdmin(id)})
	}))
	mux.HandleFunc("PUT "+api.PathUserPassword+"/{name}/password", a.authenticated(a.handleSetPassword))
	mux.HandleFunc("GET "+api.PathTokens, a.authenticated(func(w http.ResponseWriter, r *http.Request, id *Identity) {
		var tokens []api.APIToken
		var err error
		if a.login.isAdmin(id) {
			tokens, err = a.ListTokens(r.Context())
		} else {
			tokens, err = a.ListUserTokens(r.Context(), id.User)
		}
		if err != nil {
			a.log.Error("listing API tokens", "err", err)
			writeStatus(w, http.StatusInternalServerError, api.ReasonInternal, "listing API tokens failed")
			return
		}
		writeJSON(w, http.StatusOK, api.APITokenList{Items: tokens})
	}))
	mux.HandleFunc("POST "+api.PathTokens, a.authenticated(func(w http.ResponseWriter, r *http.Request, id *Identity) {
		var req api.CreateTokenRequest
		if !decodeBody(w, r, &req) {
			return
		}
		t, err := a.CreateAPIToken(r.Context(), id, req)
		switch {
		case errors.Is(err, ErrBadTokenRequest):
			writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
		case errors.Is(err, ErrForbidden):
			writeStatus(w, http.StatusForbidden, api.ReasonForbidden, err.Error())
		case err != nil:
			a.log.Error("creating an API token", "user", id.User, "err", err)
			writeStatus(w, http.StatusInternalServerError, api.ReasonInternal, "creating the API token failed")
		default:
			writeJSON(w, http.StatusCreated, t)
		}
	}))
	mux.HandleFunc("DELETE "+api.PathTokens+"/{id}", a.authenticated(func(w http.ResponseWriter, r *http.Request, id *Identity) {
		var owner *string
		if !a.login.isAdmin(id) {
			owner = &id.User
		}
		t, err := a.revokeToken(r.Context(), r.PathValue("id"), owner)
		switch {
		case errors.Is(err, ErrTokenNotFound):
			writeStatus(w, http.StatusNotFound, api.ReasonNotFound, err.Error())
		case err != nil:
			a.log.Error("revoking an API token", "err", err)
			writeStatus(w, http.StatusInternalServerError, api.ReasonInternal, "revoking the API token failed")
		default:
			writeJSON(w, http.StatusOK, t)
		}
	}))
}

// loginRefused is every failed login's answer, whatever the cause.
var loginRefused = users.ErrInvalidCredentials.Error()

func (a *Authenticator) handleLogin(w http.ResponseWriter, r *http.Request) {
	var req api.LoginRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Username == "" || req.Password == "" {
		writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, "a login needs username and password")
		return
	}
	if len(req.Username) > 253 {
		writeStatus(w, http.StatusUnauthorized, api.ReasonUnauthorized, loginRefused)
		return
	}
	resp, err := a.Login(r.Context(), req, source(r))
	var rl *users.RateLimitError
	switch {
	case err == nil:
		a.log.Info("login", "user", resp.User, "provider", providerOf(req), "source", source(r))
		writeJSON(w, http.StatusOK, resp)
	case errors.As(err, &rl):
		secs := int(math.Ceil(rl.RetryAfter.Seconds()))
		w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
		writeStatus(w, http.StatusTooManyRequests, api.ReasonTooManyRequests, rl.Error())
	case errors.Is(err, ErrUnknownProvider):
		names := make([]string, 0, len(a.login.providers))
		for n := range a.login.providers {
			names = append(names, n)
		}
		slices.Sort(names)
		writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("%v; this server has %s", err, strings.Join(names, ", ")))
	case errors.Is(err, ErrUnauthenticated):
		// The reason stays in the log: the answer must not say whether the user exists.
		a.log.Info("login refused", "user", req.Username, "provider", providerOf(req), "source", source(r), "reason", err)
		writeStatus(w, http.StatusUnauthorized, api.ReasonUnauthorized, loginRefused)
	default:
		a.log.Error("login failed", "user", req.Username, "provider", providerOf(req), "err", err)
		writeStatus(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "cannot check the login now; try again")
	}
}

func providerOf(req api.LoginRequest) string {
	if req.Provider == "" {
		return api.ProviderLocal
	}
	return req.Provider
}

func (a *Authenticator) handleSetPassword(w http.ResponseWriter, r *http.Request, id *Identity) {
	name := r.PathValue("name")
	var req api.SetPasswordRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if !a.login.isAdministrator(id) {
		if id.User != name {
			writeStatus(w, http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("%s may set only their own password: setting another's takes over its account, which only an administrator may", id.User))
			return
		}
		// The current password is checked as a login is, rate limits included, so that a
		// stolen session cannot take over the account or guess the password.
		if err := a.login.limiter.Allow(api.ProviderLocal+"/"+name, source(r)); err != nil {
			var rl *users.RateLimitError
			errors.As(err, &rl)
			w.Header().Set("Retry-After", strconv.Itoa(max(int(math.Ceil(rl.RetryAfter.Seconds())), 1)))
			writeStatus(w, http.StatusTooManyRequests, api.ReasonTooManyRequests, err.Error())
			return
		}
		if _, err := (&localProvider{a: a}).Authenticate(r.Context(), name, req.OldPassword); err != nil {
			if errors.Is(err, ErrUnauthenticated) {
				writeStatus(w, http.StatusForbidden, api.ReasonForbidden, "the current password is wrong")
			} else {
				a.log.Error("checking a password", "user", name, "err", err)
				writeStatus(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "cannot check the password now; try again")
			}
			return
		}
	}
	err := a.SetPassword(r.Context(), name, req.Password)
	var pe *PolicyError
	switch {
	case err == nil:
		// Every other session of the user ends; the caller's own survives when they changed
		// their own password, so that changing it does not log them out.
		keep := ""
		if id.User == name {
			keep = Hash(BearerToken(r))
		}
		ended, err := a.EndSessions(r.Context(), name, keep)
		if err != nil {
			a.log.Error("ending sessions after a password change", "user", name, "err", err)
			writeStatus(w, http.StatusInternalServerError, api.ReasonInternal, "the password was set, but ending the user's other sessions failed; set it again")
			return
		}
		a.log.Info("password set", "user", name, "by", id.User, "sessionsEnded", ended)
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, ErrUserNotFound):
		writeStatus(w, http.StatusNotFound, api.ReasonNotFound, err.Error())
	case errors.Is(err, ErrNotLocal):
		writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
	case errors.As(err, &pe):
		writeStatus(w, http.StatusUnprocessableEntity, api.ReasonInvalid, pe.Error())
	default:
		a.log.Error("setting a password", "user", name, "err", err)
		writeStatus(w, http.StatusInternalServerError, api.ReasonInternal, "setting the password failed")
	}
}

// source is the address a request came from, for the per-source rate limit.
func source(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// decodeBody reads a bounded JSON body into v, or answers 400 and returns false.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAuthBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeStatus(w, http.StatusRequestEntityTooLarge, api.ReasonTooLarge, fmt.Sprintf("request body larger than %d bytes", maxAuthBody))
		} else {
			writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, "reading the request: "+err.Error())
		}
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, "reading the request: trailing data after the JSON object")
		return false
	}
	return true
}

// authenticated runs h with the caller's identity, or answers 401 (503 when the token could
// not be checked).
func (a *Authenticator) authenticated(h func(http.ResponseWriter, *http.Request, *Identity)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := a.Authenticate(r.Context(), BearerToken(r))
		if err != nil {
			if errors.Is(err, ErrUnauthenticated) {
				writeStatus(w, http.StatusUnauthorized, api.ReasonUnauthorized, err.Error())
			} else {
				writeStatus(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "cannot check the token now; try again")
			}
			return
		}
		h(w, r, id)
	}
}
