package audit

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// Query selects records; zero fields select everything.
type Query struct {
	User, Verb, Kind string
	// Result is ok, denied (401 and 403), error (other codes ≥ 400), or an HTTP code.
	Result       string
	Since, Until time.Time
	Limit        int
	Continue     string
}

// Limits of one query.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
	// maxHourLabels: a time range up to this many hours is looked up through the hour index;
	// a wider one is filtered page by page.
	maxHourLabels = 48
	// orderSlack: records are stored in about the order their requests ended; a record this
	// much later than until ends the scan.
	orderSlack = time.Minute
)

// ParseQuery reads a query from URL parameters. since and until are RFC 3339 times or
// durations before now (1h).
func ParseQuery(v url.Values, now time.Time) (Query, error) {
	q := Query{User: v.Get("user"), Verb: v.Get("verb"), Kind: v.Get("kind"), Result: v.Get("result"), Continue: v.Get("continue"), Limit: DefaultLimit}
	if len(q.User) > 253 {
		return q, errors.New("user: at most 253 characters")
	}
	if q.Verb != "" && !word(q.Verb, "abcdefghijklmnopqrstuvwxyz-") {
		return q, fmt.Errorf("verb %q: want a lower-case word such as create, delete, login", q.Verb)
	}
	if q.Kind != "" && !word(q.Kind, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") {
		return q, fmt.Errorf("kind %q: want a kind such as Bundle", q.Kind)
	}
	switch q.Result {
	case "", "ok", "denied", "error":
	default:
		if c, err := strconv.Atoi(q.Result); err != nil || c < 100 || c > 599 {
			return q, fmt.Errorf("result %q: want ok, denied, error or an HTTP code", q.Result)
		}
	}
	var err error
	if q.Since, err = parseTime(v.Get("since"), now); err != nil {
		return q, fmt.Errorf("since: %w", err)
	}
	if q.Until, err = parseTime(v.Get("until"), now); err != nil {
		return q, fmt.Errorf("until: %w", err)
	}
	if l := v.Get("limit"); l != "" {
		if q.Limit, err = strconv.Atoi(l); err != nil || q.Limit < 1 || q.Limit > MaxLimit {
			return q, fmt.Errorf("limit %q: want 1 to %d", l, MaxLimit)
		}
	}
	if len(q.Continue) > 1024 {
		return q, errors.New("invalid continue token")
	}
	return q, nil
}

func word(s, alphabet string) bool {
	if len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune(alphabet, r) {
			return false
		}
	}
	return true
}

// parseTime reads an RFC 3339 time, or a positive duration before now.
func parseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("duration %q must not be negative", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration such as 1h", s)
	}
	return t, nil
}

// Errors of List, for the handler to answer.
var (
	ErrBadQuery = errors.New("invalid audit query")
	ErrExpired  = errors.New("the continue token has expired: list again without it")
)

// List returns one page of records, oldest first. The page reads at most q.Limit stored
// records: filters the index cannot answer exactly (a user name's exact spelling, the time
// range's edges) are applied to that page, which may then be short or empty while Continue
// is set.
func (l *Log) List(ctx context.Context, q Query) (*api.AuditRecordList, error) {
	if q.Limit <= 0 || q.Limit > MaxLimit {
		q.Limit = DefaultLimit
	}
	sel := labels.NewSelector()
	add := func(key string, op selection.Operator, vals ...string) {
		r, err := labels.NewRequirement(key, op, vals)
		if err == nil {
			sel = sel.Add(*r)
		}
	}
	if q.User != "" {
		add(labelUser, selection.Equals, labelValue(q.User))
	}
	if q.Verb != "" {
		add(labelVerb, selection.Equals, labelValue(q.Verb))
	}
	if q.Kind != "" {
		add(labelKind, selection.Equals, labelValue(q.Kind))
	}
	switch q.Result {
	case "":
	case "ok", "denied", "error":
		add(labelOutcome, selection.Equals, q.Result)
	default:
		add(labelCode, selection.Equals, q.Result)
	}
	until := q.Until
	if until.IsZero() {
		until = l.now()
	}
	if !q.Since.IsZero() {
		if until.Before(q.Since) {
			return &api.AuditRecordList{Items: []api.AuditRecord{}, Dropped: l.dropped.Load()}, nil
		}
		if hours := hoursBetween(q.Since, until); len(hours) <= maxHourLabels {
			add(labelHour, selection.In, hours...)
		}
	}
	res, err := l.cfg.Store.List(ctx, store.ListOptions{Kind: Kind, Namespace: Namespace, Selector: sel, Limit: q.Limit, Continue: q.Continue})
	switch {
	case errors.Is(err, store.ErrCompacted):
		return nil, ErrExpired
	case errors.Is(err, store.ErrInvalidContinue):
		return nil, fmt.Errorf("%w: invalid continue token", ErrBadQuery)
	case err != nil:
		return nil, fmt.Errorf("listing audit records: %w", err)
	}
	out := &api.AuditRecordList{Items: []api.AuditRecord{}, Continue: res.Continue, Dropped: l.dropped.Load()}
	for _, raw := range res.Items {
		obj, err := store.Decode(raw)
		if err != nil {
			continue
		}
		var rec api.AuditRecord
		if json.Unmarshal(obj.Spec, &rec) != nil {
			continue
		}
		if !q.Until.IsZero() && rec.Time.After(q.Until.Add(orderSlack)) {
			// Everything after is later still.
			out.Continue = ""
			break
		}
		if q.User != "" && rec.User != q.User || !q.Since.IsZero() && rec.Time.Before(q.Since) || !q.Until.IsZero() && rec.Time.After(q.Until) {
			continue
		}
		out.Items = append(out.Items, rec)
	}
	return out, nil
}

// hoursBetween returns the hour labels from since to until, or more than maxHourLabels of them
// when the range is wider.
func hoursBetween(since, until time.Time) []string {
	var out []string
	for h := since.UTC().Truncate(time.Hour); !h.After(until); h = h.Add(time.Hour) {
		out = append(out, h.Format(hourLayout))
		if len(out) > maxHourLabels {
			break
		}
	}
	return out
}

// Handler serves GET /v1/audit. It authorises no one: mount it behind the admins-only check.
func (l *Log) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, err := ParseQuery(r.URL.Query(), l.now())
		if err == nil {
			var list *api.AuditRecordList
			if list, err = l.List(r.Context(), q); err == nil {
				w.Header().Set("Content-Type", "application/json")
				json.NewEncoder(w).Encode(list)
				return
			}
		} else {
			err = fmt.Errorf("%w: %v", ErrBadQuery, err)
		}
		st := &api.Status{TypeMeta: api.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure",
			Code: http.StatusInternalServerError, Reason: api.ReasonInternal, Message: "internal error"}
		switch {
		case errors.Is(err, ErrBadQuery):
			st.Code, st.Reason, st.Message = http.StatusBadRequest, api.ReasonBadRequest, err.Error()
		case errors.Is(err, ErrExpired):
			st.Code, st.Reason, st.Message = http.StatusGone, api.ReasonGone, err.Error()
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, store.ErrClosed):
			st.Code, st.Reason, st.Message = http.StatusServiceUnavailable, api.ReasonUnavailable, "the server is busy or shutting down; try again"
		default:
			l.log.Error("listing audit records", "err", err)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(st.Code)
		json.NewEncoder(w).Encode(st)
	})
}

// labelValue returns s if it is a valid label value, else a readable prefix of it and a hash
// of all of it: distinct names keep distinct values, and the query compares exactly anyway.
func labelValue(s string) string {
	if validLabel(s) {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	h := hex.EncodeToString(sum[:6])
	clean := strings.Map(func(r rune) rune {
		if r < 128 && (alnum(byte(r)) || r == '-' || r == '_' || r == '.') {
			return r
		}
		return '_'
	}, s)
	if len(clean) > 40 {
		clean = clean[:40]
	}
	clean = strings.TrimFunc(clean, func(r rune) bool { return !alnum(byte(r)) })
	if clean == "" {
		return "h" + h
	}
	return clean + "-" + h
}

func validLabel(s string) bool {
	if s == "" || len(s) > 63 || !alnum(s[0]) || !alnum(s[len(s)-1]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

func alnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
