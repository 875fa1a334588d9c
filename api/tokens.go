package api

import "time"

// PathTokens lists API tokens (GET: a user's own, all for admins), creates one for the caller
// (POST, a CreateTokenRequest answered by a CreatedToken) and revokes one (DELETE
// PathTokens/ID: one's own, any for admins).
const PathTokens = "/v1/tokens"

// APIToken is what is shown of an API token: who it is for, never its value or hash.
type APIToken struct {
	// ID names the token for revocation: the first characters of its hash.
	ID    string `json:"id"`
	User  string `json:"user"`
	Admin bool   `json:"admin,omitempty"`
	// Session marks a login's token, as against one made with POST PathTokens or at bootstrap.
	Session     bool       `json:"session,omitempty"`
	Description string     `json:"description,omitempty"`
	Created     *time.Time `json:"created,omitempty"`
	Expires     *time.Time `json:"expires,omitempty"`
}

// APITokenList is the answer to GET PathTokens.
type APITokenList struct {
	Items []APIToken `json:"items"`
}

// CreateTokenRequest asks for an API token for the caller.
type CreateTokenRequest struct {
	Description string `json:"description,omitempty"`
	// TTL is a Go duration ("720h"); empty means the server's maximum.
	TTL string `json:"ttl,omitempty"`
	// Admin asks for an admin token; only admins may.
	Admin bool `json:"admin,omitempty"`
}

// CreatedToken is a new API token: Token is its value, shown this once.
type CreatedToken struct {
	APIToken `json:",inline"`
	Token    string `json:"token"`
}

// PathRotateKeys: POST (admins) makes new cluster-credential and Secret keys; the old ones stay
// valid for the server's key grace period. Answers KeyRotation.
const PathRotateKeys = "/v1/keys/rotate"

// KeyRotation names the keys a rotation made.
type KeyRotation struct {
	CredentialKey string `json:"credentialKey"`
	SecretKey     string `json:"secretKey"`
}
