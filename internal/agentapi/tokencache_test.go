package agentapi

import (
	"sync"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// A lookup that read a token before its deletion must not cache it after: the deleted token
// would keep working for the cache's lifetime.
func TestTokenCacheSkipsLookupsThatRacedADeletion(t *testing.T) {
	c := &tokenCache{entries: map[string]cachedToken{}, locks: map[string]*sync.Mutex{}, uses: map[store.Key]int{}}
	obj := &api.Object{Metadata: api.ObjectMeta{Namespace: "fleet-default", Name: "tok"}}
	now := time.Now()

	gen := c.generation()
	c.forget("fleet-default", "tok") // the delete lands while the lookup is in the store
	c.put("h", obj, now, gen)
	if c.get("h", now) != nil {
		t.Error("a token read before its deletion was cached after it")
	}

	gen = c.generation()
	c.put("h", obj, now, gen)
	if c.get("h", now) == nil {
		t.Error("a lookup with no deletion in between was not cached")
	}
	gen = c.generation()
	c.forgetAll()
	c.put("h2", obj, now, gen)
	if c.get("h2", now) != nil {
		t.Error("a token read before the cache was emptied was cached after it")
	}
}
