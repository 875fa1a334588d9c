package fleet

import (
	"context"
	"sync"
	"time"
)

// knownWaiters are the registrations waiting for the model to learn their new cluster,
// by UID: applyCluster wakes them as it adds the cluster, instead of each polling.
type knownWaiters struct {
	mu sync.Mutex
	m  map[string][]chan struct{}
}

// wake wakes who waits for the cluster uid. Called with f.mu held, after the cluster is in
// the model.
func (k *knownWaiters) wake(uid string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, ch := range k.m[uid] {
		close(ch)
	}
	delete(k.m, uid)
}

func (k *knownWaiters) add(uid string) chan struct{} {
	ch := make(chan struct{})
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[string][]chan struct{}{}
	}
	k.m[uid] = append(k.m[uid], ch)
	return ch
}

func (k *knownWaiters) remove(uid string, ch chan struct{}) {
	k.mu.Lock()
	defer k.mu.Unlock()
	list := k.m[uid]
	for i, c := range list {
		if c == ch {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(k.m, uid)
	} else {
		k.m[uid] = list
	}
}

// knownRecheck bounds how long WaitKnown can miss a cluster the model learnt other than
// through applyCluster (a reload).
const knownRecheck = 50 * time.Millisecond

// WaitKnown waits until the model holds cluster ns/name with uid (see Known), for at most
// d; it reports whether it does.
func (f *Fleet) WaitKnown(ctx context.Context, ns, name, uid string, d time.Duration) bool {
	if f.Known(ns, name, uid) {
		return true
	}
	// Listed before looking again, so that an apply in between is not missed.
	ch := f.known.add(uid)
	defer f.known.remove(uid, ch)
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(knownRecheck)
	defer tick.Stop()
	for {
		if f.Known(ns, name, uid) {
			return true
		}
		select {
		case <-ch:
			return f.Known(ns, name, uid)
		case <-tick.C:
		case <-deadline.C:
			return f.Known(ns, name, uid)
		case <-ctx.Done():
			return false
		}
	}
}
