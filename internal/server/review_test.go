package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"flotilla.dev/api"
)

// call sends body with token and returns the code and the answer.
func call(t *testing.T, hc *http.Client, ts *testServer, method, path, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, ts.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

// A user allowed to manage users (update users everywhere) but no administrator must not
// mint an admin token, nor take over an administrator's account by setting its password.
func TestReviewUserManagerIsNoAdmin(t *testing.T) {
	ts, _ := startWith(t, t.TempDir(), nil)
	hc := rawClient(t, ts)
	const ap = "/apis/flotilla.dev/v1alpha1"
	must := func(method, path, token, body string, want int) string {
		t.Helper()
		code, out := call(t, hc, ts, method, path, token, body)
		if code != want {
			t.Fatalf("%s %s: %d %s, want %d", method, path, code, out, want)
		}
		return out
	}
	const pw = `{"password":"a long enough passphrase 42"}`
	for _, u := range []string{"mgr", "root"} {
		must("POST", ap+"/users", adminToken, `{"metadata":{"name":"`+u+`"},"spec":{}}`, http.StatusCreated)
		must("PUT", api.PathUserPassword+"/"+u+"/password", adminToken, pw, http.StatusNoContent)
	}
	must("POST", ap+"/roles", adminToken, `{"metadata":{"name":"user-manager"},"spec":{"context":"global","rules":[{"resources":["users"],"verbs":["get","list","create","update"]}]}}`, http.StatusCreated)
	must("POST", ap+"/rolebindings", adminToken, `{"metadata":{"name":"mgr"},"spec":{"subject":{"kind":"User","name":"mgr"},"roleRef":"user-manager","scope":{"global":true}}}`, http.StatusCreated)
	must("POST", ap+"/rolebindings", adminToken, `{"metadata":{"name":"root"},"spec":{"subject":{"kind":"User","name":"root"},"roleRef":"admin","scope":{"global":true}}}`, http.StatusCreated)
	var login api.LoginResponse
	json.Unmarshal([]byte(must("POST", api.PathLogin, "", `{"username":"mgr","password":"a long enough passphrase 42"}`, http.StatusOK)), &login)
	mgr := login.Token
	must("GET", ap+"/gitrepos", mgr, "", http.StatusForbidden)

	if code, out := call(t, hc, ts, "POST", api.PathTokens, mgr, `{"admin":true,"description":"x"}`); code != http.StatusForbidden {
		t.Errorf("a user manager minting an admin token: %d %s, want 403", code, out)
	}
	if code, out := call(t, hc, ts, "PUT", api.PathUserPassword+"/root/password", mgr, `{"password":"mallory owns this one now"}`); code != http.StatusForbidden {
		t.Errorf("a user manager setting an administrator's password: %d %s, want 403", code, out)
	}
	// Its own tokens it still makes; an administrator by binding (no admin token) may do both.
	must("POST", api.PathTokens, mgr, `{"description":"mine"}`, http.StatusCreated)
	json.Unmarshal([]byte(must("POST", api.PathLogin, "", `{"username":"root","password":"a long enough passphrase 42"}`, http.StatusOK)), &login)
	must("PUT", api.PathUserPassword+"/mgr/password", login.Token, `{"password":"another long passphrase 7"}`, http.StatusNoContent)
	must("POST", api.PathTokens, login.Token, `{"admin":true}`, http.StatusCreated)
}
