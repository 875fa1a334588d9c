package agentapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"flotilla.dev/api"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/audit"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/resource"
	"flotilla.dev/internal/store"
)

// kindRegistrationSecret is the internal record that maps a registration token's hash to
// its RegistrationToken object. The token itself is never stored.
const kindRegistrationSecret = "RegistrationSecret"

type registrationSecret struct {
	Hash      string `json:"hash"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

func secretKey(hash string) store.Key {
	return store.Key{Kind: kindRegistrationSecret, Namespace: auth.SystemNamespace, Name: "r-" + hash[:40]}
}

// ClusterName is the name a cluster with clientID gets: derived from the identity, so that a
// cluster registering again finds its Cluster without a search.
func ClusterName(clientID string) string {
	h := sha256.Sum256([]byte(clientID))
	return "c-" + hex.EncodeToString(h[:])[:16]
}

// derivedName matches the names ClusterName makes.
var derivedName = regexp.MustCompile(`^c-[0-9a-f]{16}$`)

// checkReservedName says why name may not be asked for by the cluster with clientID, or "".
// Derived names are reserved: asking for another cluster's would keep that cluster from
// ever registering (a token replacing the cluster of that name may, see registerCluster).
func checkReservedName(name, clientID string) string {
	if derivedName.MatchString(name) && name != ClusterName(clientID) {
		return fmt.Sprintf("cluster name %q has the form c-<16 hex digits>, which is reserved for names derived from a cluster's identity", name)
	}
	return ""
}

// TokenHooks mint registration tokens: the value is made when the RegistrationToken is
// created, shown once in the create response, and stored only as a hash.
type TokenHooks struct {
	st  store.Store
	now func() time.Time
	// forget drops a deleted token from the registration cache.
	forget func(namespace, name string)

	mu     sync.Mutex
	minted map[string]string // object UID → token, between BeforeCreate and AfterCreate
}

// NewTokenHooks returns the hooks for RegistrationToken.
func NewTokenHooks(st store.Store) *TokenHooks {
	return &TokenHooks{st: st, now: time.Now, minted: map[string]string{}, forget: func(string, string) {}}
}

// TokenHooks returns the hooks for RegistrationToken that also drop a deleted token from
// this server's registration cache at once, so a deleted token registers nothing more.
func (s *Server) TokenHooks() *TokenHooks {
	h := NewTokenHooks(s.st)
	h.forget = s.tokens.forget
	return h
}

// AfterDelete forgets the deleted token: it stops working at once.
func (h *TokenHooks) AfterDelete(_ context.Context, obj *api.Object) {
	h.forget(obj.Metadata.Namespace, obj.Metadata.Name)
}

// BeforeCreate sets the expiry and records the new token's hash.
func (h *TokenHooks) BeforeCreate(ctx context.Context, obj *api.Object, dryRun bool) error {
	var spec api.RegistrationTokenSpec
	json.Unmarshal(obj.Spec, &spec)
	st := api.RegistrationTokenStatus{}
	if spec.TTL != "" {
		d, _ := time.ParseDuration(spec.TTL)
		e := h.now().Add(d).UTC().Truncate(time.Second)
		st.Expires = &e
	}
	obj.Status, _ = json.Marshal(st)
	if dryRun {
		return nil
	}
	token := auth.NewToken("frt_")
	hash := auth.Hash(token)
	rec, _ := json.Marshal(registrationSecret{Hash: hash, Namespace: obj.Metadata.Namespace, Name: obj.Metadata.Name, UID: obj.Metadata.UID})
	k := secretKey(hash)
	if _, err := h.st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: k.Kind},
		Metadata: api.ObjectMeta{Namespace: k.Namespace, Name: k.Name}, Spec: rec}); err != nil {
		return fmt.Errorf("recording registration token: %w", err)
	}
	h.mu.Lock()
	h.minted[obj.Metadata.UID] = token
	h.mu.Unlock()
	return nil
}

// AfterCreate shows the token, once, in the create response.
func (h *TokenHooks) AfterCreate(ctx context.Context, obj *api.Object) error {
	h.mu.Lock()
	token := h.minted[obj.Metadata.UID]
	delete(h.minted, obj.Metadata.UID)
	h.mu.Unlock()
	var st api.RegistrationTokenStatus
	json.Unmarshal(obj.Status, &st)
	st.Token = token
	obj.Status, _ = json.Marshal(st)
	return nil
}

// BeforeUpdate keeps the token's status (uses, expiry) out of clients' hands.
func (h *TokenHooks) BeforeUpdate(ctx context.Context, old, obj *api.Object, dryRun bool) error {
	obj.Status = old.Status
	return nil
}

// tokenError answers an unusable registration token.
type tokenError struct{ msg string }

func (e *tokenError) Error() string { return e.msg }

// tokenCache remembers resolved registration tokens for a few seconds: a fleet registering
// at once presents the same token thousands of times a second.
type tokenCache struct {
	mu      sync.Mutex
	entries map[string]cachedToken
	locks   map[string]*sync.Mutex // per token UID, for tokens with maxUses
	uses    map[store.Key]int      // registrations not yet added to unlimited tokens' status
	// forgets counts deletions seen: a lookup that began before one is not cached, as the
	// token it read may be the one deleted.
	forgets uint64
}

type cachedToken struct {
	obj *api.Object
	at  time.Time
}

const tokenCacheTTL = 5 * time.Second

func (c *tokenCache) get(hash string, now time.Time) *api.Object {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[hash]; ok && now.Sub(e.at) < tokenCacheTTL {
		return e.obj
	}
	return nil
}

// generation is taken before a store lookup and handed to put.
func (c *tokenCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.forgets
}

func (c *tokenCache) put(hash string, obj *api.Object, now time.Time, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.forgets {
		return
	}
	if len(c.entries) > 10000 {
		clear(c.entries)
	}
	c.entries[hash] = cachedToken{obj: obj, at: now}
}

// forget drops the cached entries of the token namespace/name.
func (c *tokenCache) forget(namespace, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgets++
	for hash, e := range c.entries {
		if e.obj.Metadata.Namespace == namespace && e.obj.Metadata.Name == name {
			delete(c.entries, hash)
		}
	}
}

// forgetAll empties the cache: after a gap in the watch that reports deletions.
func (c *tokenCache) forgetAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgets++
	clear(c.entries)
}

func (c *tokenCache) lock(uid string) *sync.Mutex {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.locks[uid]
	if m == nil {
		m = &sync.Mutex{}
		c.locks[uid] = m
	}
	return m
}

// resolveToken finds the RegistrationToken behind a bearer token and checks it can be used.
func (s *Server) resolveToken(ctx context.Context, token string) (*api.Object, error) {
	if token == "" {
		return nil, &tokenError{"no registration token"}
	}
	hash := auth.Hash(token)
	obj := s.tokens.get(hash, s.now())
	if obj == nil {
		gen := s.tokens.generation()
		var err error
		if obj, err = s.lookupToken(ctx, hash); err != nil {
			return nil, err
		}
		s.tokens.put(hash, obj, s.now(), gen)
	}
	var spec api.RegistrationTokenSpec
	var st api.RegistrationTokenStatus
	json.Unmarshal(obj.Spec, &spec)
	json.Unmarshal(obj.Status, &st)
	if st.Expires != nil && s.now().After(*st.Expires) {
		return nil, &tokenError{fmt.Sprintf("registration token %s expired at %s", obj.Metadata.Name, st.Expires.Format(time.RFC3339))}
	}
	// A used-up token is refused where a registration would use it (useToken): an agent
	// registering its own Cluster again, proving it with its credential, uses none.
	return obj, nil
}

func (s *Server) lookupToken(ctx context.Context, hash string) (*api.Object, error) {
	rec, err := s.st.Get(ctx, secretKey(hash))
	if errors.Is(err, store.ErrNotFound) {
		return nil, &tokenError{"unknown registration token"}
	}
	if err != nil {
		return nil, err
	}
	var sec registrationSecret
	json.Unmarshal(rec.Spec, &sec)
	if sec.Hash != hash {
		return nil, &tokenError{"unknown registration token"}
	}
	obj, err := s.st.Get(ctx, store.Key{Kind: api.KindRegistrationToken, Namespace: sec.Namespace, Name: sec.Name})
	if errors.Is(err, store.ErrNotFound) || (err == nil && obj.Metadata.UID != sec.UID) {
		return nil, &tokenError{"registration token was deleted"}
	}
	if err != nil {
		return nil, err
	}
	return obj, nil
}

// useToken counts one registration against the token. A token with maxUses is counted in the
// store at once, under its own lock, so that it is never used more often than allowed; the
// uses of unlimited tokens are added up in memory and written every few seconds (flushUses).
func (s *Server) useToken(ctx context.Context, tok *api.Object) error {
	var spec api.RegistrationTokenSpec
	json.Unmarshal(tok.Spec, &spec)
	if spec.MaxUses == 0 {
		s.tokens.mu.Lock()
		s.tokens.uses[store.KeyOf(tok)]++
		s.tokens.mu.Unlock()
		return nil
	}
	mu := s.tokens.lock(tok.Metadata.UID)
	mu.Lock()
	defer mu.Unlock()
	tok, err := s.st.Get(ctx, store.KeyOf(tok))
	if err != nil {
		return err
	}
	for attempt := 0; attempt < 5; attempt++ {
		var spec api.RegistrationTokenSpec
		var st api.RegistrationTokenStatus
		json.Unmarshal(tok.Spec, &spec)
		json.Unmarshal(tok.Status, &st)
		if spec.MaxUses > 0 && st.Uses >= spec.MaxUses {
			return &tokenError{fmt.Sprintf("registration token %s is used up (%d of %d registrations)", tok.Metadata.Name, st.Uses, spec.MaxUses)}
		}
		st.Uses++
		tok.Status, _ = json.Marshal(st)
		_, err := s.st.Update(ctx, tok)
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
		if tok, err = s.st.Get(ctx, store.KeyOf(tok)); err != nil {
			return err
		}
	}
	return errors.New("registration token is busy; try again")
}

// flushUses writes the registrations counted in memory to unlimited tokens' status.
func (s *Server) flushUses(ctx context.Context) {
	s.tokens.mu.Lock()
	pending := s.tokens.uses
	s.tokens.uses = map[store.Key]int{}
	s.tokens.mu.Unlock()
	for key, n := range pending {
		for attempt := 0; attempt < 5; attempt++ {
			tok, err := s.st.Get(ctx, key)
			if err != nil {
				break // deleted meanwhile
			}
			var st api.RegistrationTokenStatus
			json.Unmarshal(tok.Status, &st)
			st.Uses += n
			tok.Status, _ = json.Marshal(st)
			if _, err = s.st.Update(ctx, tok); !errors.Is(err, store.ErrConflict) {
				if err != nil {
					s.log.Warn("counting registration token uses", "token", key.String(), "err", err)
				}
				break
			}
		}
	}
}

// Run writes counted token uses every few seconds, and follows deletions of registration
// tokens (made through another replica, or straight in the store), until ctx ends.
func (s *Server) Run(ctx context.Context) {
	go s.followTokenDeletions(ctx)
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.flushUses(context.Background())
			return
		case <-t.C:
			s.flushUses(ctx)
		}
	}
}

// followTokenDeletions drops deleted tokens from the registration cache. Whenever the watch
// must start again it empties the cache, since a deletion may have been missed meanwhile.
func (s *Server) followTokenDeletions(ctx context.Context) {
	for ctx.Err() == nil {
		ch, err := s.st.Watch(ctx, store.WatchOptions{Kind: api.KindRegistrationToken})
		s.tokens.forgetAll()
		if err != nil {
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		for ev := range ch {
			if ev.Type != api.Deleted {
				continue
			}
			if obj, err := store.Decode(ev.Object); err == nil {
				s.tokens.forget(obj.Metadata.Namespace, obj.Metadata.Name)
			}
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// refusedError answers a registration that may not take over an existing cluster.
type refusedError struct{ msg string }

func (e *refusedError) Error() string { return e.msg }

// badNameError answers a registration asking for a name it may not have.
type badNameError struct{ msg string }

func (e *badNameError) Error() string { return e.msg }

// takenError answers a registration asking for a name another cluster has.
type takenError struct{ msg string }

func (e *takenError) Error() string { return e.msg }

// checkSameClient refuses cur, the Cluster of the name asked for, when it is another
// cluster's: no token, bound or not, hands one cluster's name and deployments to another.
func checkSameClient(cur *api.Object, clientID string) error {
	var spec api.ClusterSpec
	json.Unmarshal(cur.Spec, &spec)
	if spec.ClientID == clientID {
		return nil
	}
	ns, name := cur.Metadata.Namespace, cur.Metadata.Name
	return &takenError{fmt.Sprintf("cluster name %s/%s is taken by another cluster: choose another --cluster-name, "+
		"or delete that Cluster first (flotilla delete cluster %s -n %s) if this cluster replaces it", ns, name, name, ns)}
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var req api.RegisterRequest
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err != nil || req.ClientID == "" {
		fail(w, http.StatusBadRequest, api.ReasonBadRequest, "malformed registration request: a clientID is required")
		return
	}
	meta := api.ObjectMeta{Name: "x", Namespace: "x", Labels: req.Labels}
	if err := resource.Prepare(&api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster}, Metadata: meta}); err != nil {
		fail(w, http.StatusUnprocessableEntity, api.ReasonInvalid, "invalid cluster labels: "+err.Error())
		return
	}
	if req.ClusterName != "" {
		if msgs := validation.IsDNS1123Label(req.ClusterName); len(msgs) > 0 {
			fail(w, http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("cluster name %q is not a valid DNS label: %s", req.ClusterName, strings.Join(msgs, "; ")))
			return
		}
	}
	resp, err := s.registerCluster(ctx, auth.BearerToken(r), &req)
	var bad *badNameError
	var te *tokenError
	var re *refusedError
	var taken *takenError
	switch {
	case errors.As(err, &bad):
		fail(w, http.StatusBadRequest, api.ReasonBadRequest, bad.msg)
	case errors.As(err, &te):
		fail(w, http.StatusUnauthorized, api.ReasonTokenInvalid, te.msg)
	case errors.As(err, &re):
		fail(w, http.StatusForbidden, api.ReasonRegistrationRefused, re.msg)
	case errors.As(err, &taken):
		fail(w, http.StatusConflict, api.ReasonAlreadyExists, taken.msg)
	case err != nil:
		s.log.Error("registering a cluster", "err", err)
		fail(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "registration failed; try again")
	default:
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(resp)
	}
}

func (s *Server) registerCluster(ctx context.Context, token string, req *api.RegisterRequest) (*api.RegisterResponse, error) {
	tok, err := s.resolveToken(ctx, token)
	if err != nil {
		return nil, err
	}
	var tspec api.RegistrationTokenSpec
	json.Unmarshal(tok.Spec, &tspec)
	ns := tok.Metadata.Namespace
	// The agent may ask for a name; a token replacing a cluster names it; else it is derived
	// from the client ID. Either way the Cluster of that name, if any, must be this client's,
	// unless the token replaces it.
	replaces := tspec.Replace && tspec.ClusterName != ""
	name := req.ClusterName
	if name == "" && replaces {
		name = tspec.ClusterName
	}
	if name == "" {
		name = ClusterName(req.ClientID)
	}
	replaces = replaces && tspec.ClusterName == name
	if req.ClusterName != "" && !replaces {
		if msg := checkReservedName(req.ClusterName, req.ClientID); msg != "" {
			return nil, &badNameError{msg}
		}
	}
	if tspec.ClusterName != "" && tspec.ClusterName != name {
		msg := fmt.Sprintf("registration token %s is bound to cluster %s/%s, and this cluster asks for %s/%s", tok.Metadata.Name, ns, tspec.ClusterName, ns, name)
		if req.ClusterName == "" {
			msg = fmt.Sprintf("registration token %s is bound to cluster %s/%s, and this cluster's derived name is %s/%s (start the agent with --cluster-name %s to register as %s)",
				tok.Metadata.Name, ns, tspec.ClusterName, ns, name, tspec.ClusterName, tspec.ClusterName)
		}
		return nil, &tokenError{msg}
	}
	key := store.Key{Kind: api.KindCluster, Namespace: ns, Name: name}
	// Nearly every registration is a new cluster's: with a token whose uses are only
	// counted, and a name the model does not know, the Cluster is created at once, saving a
	// read per registration. If it exists after all, the registration goes the whole way
	// below (an existing cluster must prove itself); the unused create costs nothing.
	var cur *api.Object
	fresh := false
	if tspec.MaxUses == 0 && s.fleet.UIDOf(ns, name) == "" {
		cur, err = s.createCluster(ctx, tok, &tspec, key, req)
		switch {
		case err == nil:
			fresh = true
			if err := s.useToken(ctx, tok); err != nil {
				return nil, err
			}
		case !errors.Is(err, store.ErrAlreadyExists):
			return nil, err
		}
	}
	if fresh {
		// Created above.
	} else if cur, err = s.st.Get(ctx, key); errors.Is(err, store.ErrNotFound) {
		if err := s.useToken(ctx, tok); err != nil {
			return nil, err
		}
		cur, err = s.createCluster(ctx, tok, &tspec, key, req)
		if errors.Is(err, store.ErrAlreadyExists) {
			// Registered at once by another request: this cluster's, or another cluster
			// asking for the same name.
			if cur, err = s.st.Get(ctx, key); err == nil {
				err = checkSameClient(cur, req.ClientID)
			}
		}
		if err != nil {
			return nil, err
		}
	} else if err == nil && replaces && checkSameClient(cur, req.ClientID) != nil {
		if cur, err = s.replaceCluster(ctx, tok, tspec, cur, req); err != nil {
			return nil, err
		}
	} else if err == nil {
		if err := checkSameClient(cur, req.ClientID); err != nil {
			return nil, err
		}
		// The client ID is no secret (the kube-system namespace UID): taking over an existing
		// cluster needs its credential, or a token the operator bound to this cluster.
		bound := tspec.ClusterName == name
		if !bound && !s.holdsCredential(ctx, req.Credential, identity{Namespace: ns, Name: name, UID: cur.Metadata.UID}) {
			return nil, &refusedError{fmt.Sprintf("cluster %s/%s is already registered: registering it again needs its current credential "+
				"(the agent sends the one it keeps), or a registration token bound to it (flotilla token create --cluster %s -n %s); "+
				"or delete the Cluster to register it anew", ns, name, name, ns)}
		}
		if bound {
			if err := s.useToken(ctx, tok); err != nil {
				return nil, err
			}
			// Only a token the operator bound to this cluster adds labels to it: any other
			// token's labels would widen the cluster's targeting behind the operator's back.
			// The server writes the cluster's status meanwhile: a conflict reads it again.
			for attempt := 0; ; attempt++ {
				added := false
				if cur.Metadata.Labels == nil {
					cur.Metadata.Labels = map[string]string{}
				}
				for k, v := range mergeLabels(req.Labels, tspec.Labels) {
					if _, ok := cur.Metadata.Labels[k]; !ok {
						cur.Metadata.Labels[k] = v
						added = true
					}
				}
				if !added {
					break
				}
				next, err := s.st.Update(ctx, cur)
				if err == nil {
					cur = next
					break
				}
				if !errors.Is(err, store.ErrConflict) || attempt >= 10 {
					return nil, err
				}
				if cur, err = s.st.Get(ctx, key); err != nil {
					return nil, err
				}
				if err := checkSameClient(cur, req.ClientID); err != nil {
					return nil, err
				}
			}
			s.log.Info("cluster taken over with a token bound to it", "cluster", ns+"/"+name, "token", tok.Metadata.Name)
		}
	} else {
		return nil, err
	}
	// Answer once the fleet model knows the cluster, so the agent's first poll succeeds.
	if !s.fleet.WaitKnown(ctx, ns, name, cur.Metadata.UID, 5*time.Second) && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	audit.Annotate(ctx, "", nil, api.KindCluster, ns, name)
	cred, exp := s.keys.mint(identity{Namespace: ns, Name: name, UID: cur.Metadata.UID})
	return &api.RegisterResponse{Namespace: ns, ClusterName: name, Credential: cred, Expires: &exp, Doorbell: s.doorbellInfo(cur.Metadata.UID)}, nil
}

// createCluster stores the new Cluster key of the cluster registering with req.
func (s *Server) createCluster(ctx context.Context, tok *api.Object, tspec *api.RegistrationTokenSpec, key store.Key, req *api.RegisterRequest) (*api.Object, error) {
	now := s.now().UTC().Truncate(time.Second)
	spec, _ := json.Marshal(api.ClusterSpec{ClientID: req.ClientID})
	st, _ := json.Marshal(api.ClusterStatus{Inventory: req.Inventory, State: "Pending"})
	cur, err := s.st.Create(ctx, &api.Object{
		TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
		Metadata: api.ObjectMeta{Namespace: key.Namespace, Name: key.Name, UID: apiserver.NewUID(), Generation: 1, CreationTimestamp: &now,
			Labels:      mergeLabels(req.Labels, tspec.Labels),
			Annotations: map[string]string{"flotilla.dev/registered-with": tok.Metadata.Name}},
		Spec: spec, Status: st,
	})
	if err == nil {
		s.log.Debug("cluster registered", "cluster", key.Namespace+"/"+key.Name, "token", tok.Metadata.Name)
	}
	return cur, err
}

// replaceCluster gives cur, the Cluster of a cluster that was rebuilt, to the cluster
// registering with a token bound to it for that. Name, labels, annotations and spec stay; the
// client ID becomes the new cluster's, the status starts afresh, and the UID is new: the old
// cluster's credential names the old UID, so it stops working at once on every server, and
// what the old cluster reported is forgotten as for a deleted one.
func (s *Server) replaceCluster(ctx context.Context, tok *api.Object, tspec api.RegistrationTokenSpec, cur *api.Object, req *api.RegisterRequest) (*api.Object, error) {
	if err := s.useToken(ctx, tok); err != nil {
		return nil, err
	}
	key := store.KeyOf(cur)
	for attempt := 0; ; attempt++ {
		var spec map[string]any
		if err := json.Unmarshal(cur.Spec, &spec); err != nil || spec == nil {
			spec = map[string]any{}
		}
		spec["clientID"] = req.ClientID
		next := cur.DeepCopy()
		oldUID := cur.Metadata.UID
		next.Metadata.UID = apiserver.NewUID()
		next.Spec, _ = json.Marshal(spec)
		next.Status, _ = json.Marshal(api.ClusterStatus{Inventory: req.Inventory, State: "Pending"})
		if next.Metadata.Labels == nil {
			next.Metadata.Labels = map[string]string{}
		}
		for k, v := range mergeLabels(req.Labels, tspec.Labels) {
			if _, ok := next.Metadata.Labels[k]; !ok {
				next.Metadata.Labels[k] = v
			}
		}
		if next.Metadata.Annotations == nil {
			next.Metadata.Annotations = map[string]string{}
		}
		next.Metadata.Annotations["flotilla.dev/registered-with"] = tok.Metadata.Name
		// The update is at cur's resourceVersion: a write since, or a concurrent replacement,
		// is a conflict, and the Cluster is read again.
		out, err := s.st.Update(ctx, next)
		if err == nil {
			s.log.Info("rebuilt cluster re-adopted with a token bound to it; the old cluster's credential is revoked",
				"cluster", key.Namespace+"/"+key.Name, "token", tok.Metadata.Name, "oldUID", oldUID, "uid", out.Metadata.UID)
			return out, nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt >= 10 {
			return nil, err
		}
		if cur, err = s.st.Get(ctx, key); err != nil {
			return nil, err
		}
		if checkSameClient(cur, req.ClientID) == nil {
			return cur, nil // replaced already, by this cluster's other request
		}
	}
}

// holdsCredential reports whether cred is want's credential: valid, or expired less than
// the renewal grace ago.
func (s *Server) holdsCredential(ctx context.Context, cred string, want identity) bool {
	if cred == "" {
		return false
	}
	id, info, err := s.keys.verify(ctx, cred)
	if errors.Is(err, errExpired) && s.keys.renewable(info) {
		err = nil
	}
	return err == nil && id == want
}

// mergeLabels gives the token's labels precedence over the agent's: the operator who made
// the token decides.
func mergeLabels(agent, token map[string]string) map[string]string {
	out := maps.Clone(agent)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, token)
	return out
}
