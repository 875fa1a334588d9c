package api

import "time"

// PathTokens lists the API tokens (GET) and revokes one (DELETE PathTokens/ID). Admins only.
const PathTokens = "/v1/tokens"

// APIToken is what an admin sees of an API token: who it is for, never its value or hash.
type APIToken struct {
	// ID names the token for revocation: the first characters of its hash.
	ID      string     `json:"id"`
	User    string     `json:"user"`
	Admin   bool       `json:"admin,omitempty"`
	Created *time.Time `json:"created,omitempty"`
	Expires *time.Time `json:"expires,omitempty"`
}

// APITokenList is the answer to GET PathTokens.
type APITokenList struct {
	Items []APIToken `json:"items"`
}

// PathRotateKeys: POST (admins) makes new cluster-credential and Secret keys; the old ones stay
// valid for the server's key grace period. Answers KeyRotation.
const PathRotateKeys = "/v1/keys/rotate"

// KeyRotation names the keys a rotation made.
type KeyRotation struct {
	CredentialKey string `json:"credentialKey"`
	SecretKey     string `json:"secretKey"`
}
