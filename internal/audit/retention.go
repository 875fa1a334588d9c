package audit

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"flotilla.dev/internal/store"
)

// Run prunes records older than the retention period every PruneInterval until ctx ends.
func (l *Log) Run(ctx context.Context) {
	t := time.NewTicker(l.cfg.PruneInterval)
	defer t.Stop()
	for {
		if n, err := l.Prune(ctx); err != nil && ctx.Err() == nil {
			l.log.Warn("pruning the audit log", "err", err)
		} else if n > 0 {
			l.log.Debug("pruned the audit log", "records", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Prune deletes records older than the retention period, oldest first, at most
// pruneBatches × PruneBatch of them, and returns how many it deleted. Records are stored in
// about time order, so it stops at the first one young enough to keep.
func (l *Log) Prune(ctx context.Context) (int, error) {
	cutoff := l.now().Add(-l.cfg.Retention)
	total := 0
	for range pruneBatches {
		res, err := l.cfg.Store.List(ctx, store.ListOptions{Kind: Kind, Namespace: Namespace, Limit: l.cfg.PruneBatch})
		if err != nil {
			return total, err
		}
		var old []store.Key
		young := false
		for _, raw := range res.Items {
			var head struct {
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
				Spec struct {
					Time time.Time `json:"time"`
				} `json:"spec"`
			}
			if err := json.Unmarshal(raw, &head); err != nil {
				continue
			}
			if !head.Spec.Time.Before(cutoff) {
				young = true
				break
			}
			old = append(old, store.Key{Kind: Kind, Namespace: Namespace, Name: head.Metadata.Name})
		}
		n, err := l.deleteAll(ctx, old)
		total += n
		if err != nil || young || res.Continue == "" {
			return total, err
		}
	}
	return total, nil
}

// deleteAll deletes keys a few at a time, so the store's writer commits them together.
func (l *Log) deleteAll(ctx context.Context, keys []store.Key) (int, error) {
	var (
		mu       sync.Mutex
		n        int
		firstErr error
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, 32)
	for _, k := range keys {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, err := l.cfg.Store.Delete(ctx, k, "")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				n++
			case errors.Is(err, store.ErrNotFound):
				// Another replica pruned it.
			case firstErr == nil:
				firstErr = err
			}
		})
	}
	wg.Wait()
	return n, firstErr
}
