package api

import "time"

// PathAudit serves the audit log (GET, admins only): records of every mutating call and
// every denied call, oldest first, filtered by the query parameters user, since, until
// (RFC 3339), verb, kind and result (ok, denied, error, or an HTTP code), paged with limit
// and continue. Answers AuditRecordList.
const PathAudit = "/v1/audit"

// HeaderRequestID carries a request's ID: taken from the request when it is sane, else made
// by the server; always echoed in the response and kept in the request's audit record.
const HeaderRequestID = "X-Request-ID"

// AuditRecord is one audited call. It never holds a request body, a header's value or a
// credential: only who, what, on which object, from where, and how it ended.
type AuditRecord struct {
	Time      time.Time `json:"time"`
	RequestID string    `json:"requestID"`
	// User and Groups are the caller as authenticated; empty when authentication failed.
	User   string   `json:"user,omitempty"`
	Groups []string `json:"groups,omitempty"`
	// Verb is create, update, patch, delete, get, list, watch, or the name of a non-resource
	// call (login, register, renew, report, poll, rotate-keys, revoke, webhook, …).
	Verb      string `json:"verb"`
	Kind      string `json:"kind,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// Method and Path are the HTTP request's; values of query parameters that may hold a
	// credential (token, password, secret, key, …) are replaced by "REDACTED".
	Method string `json:"method"`
	Path   string `json:"path"`
	// Code is the HTTP status of the answer, Reason its Status reason; Message is kept only
	// for denials (401, 403), where it says why.
	Code    int    `json:"code"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// Source is the client's address as the server saw it (no proxy header is trusted).
	Source string `json:"source,omitempty"`
	// DryRun: the call was a dry run and changed nothing.
	DryRun bool `json:"dryRun,omitempty"`
}

// AuditRecordList is one page of the audit log. A page may hold fewer records than the limit,
// even none, while Continue is set: filters are applied to a bounded scan of the log.
type AuditRecordList struct {
	Items    []AuditRecord `json:"items"`
	Continue string        `json:"continue,omitempty"`
	// Dropped counts records this server could not keep since it started because its
	// queue was full (the log is written asynchronously under a memory bound).
	Dropped int64 `json:"dropped,omitempty"`
}
