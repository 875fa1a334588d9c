package api

import "time"

// PathLogin: POST a LoginRequest, answered by a LoginResponse, or 401 (the same answer for an
// unknown user, a wrong password and a disabled user), or 429 with Retry-After when attempts
// come too fast.
const PathLogin = "/v1/login"

// PathWhoAmI: GET answers the caller's Identity.
const PathWhoAmI = "/v1/whoami"

// PathUserPassword is the collection under which PUT PathUserPassword/NAME/password sets a
// local user's password (a SetPasswordRequest): admins for anyone, users for themselves with
// their current password.
const PathUserPassword = "/v1/users"

// ReasonTooManyRequests refuses a login attempt made too soon; Retry-After says when to try.
const ReasonTooManyRequests = "TooManyRequests"

// LoginRequest logs in with a user name and password.
type LoginRequest struct {
	// Provider names the identity provider: local (the default) or ldap.
	Provider string `json:"provider,omitempty"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// LoginResponse carries a session token, shown this once.
type LoginResponse struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
	User    string    `json:"user"`
	Groups  []string  `json:"groups,omitempty"`
}

// SetPasswordRequest sets a local user's password. OldPassword is needed when users set their
// own; admins setting another's leave it out.
type SetPasswordRequest struct {
	OldPassword string `json:"oldPassword,omitempty"`
	Password    string `json:"password"`
}

// WhoAmI is who the server takes the caller for.
type WhoAmI struct {
	User   string   `json:"user"`
	Groups []string `json:"groups,omitempty"`
	Admin  bool     `json:"admin,omitempty"`
}
