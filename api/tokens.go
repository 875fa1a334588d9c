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
