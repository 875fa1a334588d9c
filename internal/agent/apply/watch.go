package apply

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
)

// Watch calls notify with a deployment's ID soon after one of the objects
// applied for it changes or is deleted, so that the agent checks its status
// (and corrects drift) within a second instead of at its next periodic
// check. It blocks until ctx ends. Call it once per Applier.
//
// It keeps one metadata-only watch per kind in use, filtered by
// LabelBundleID, and follows the kinds the Applier's inventories name as
// deployments are applied and removed. Only object metadata is cached, which
// keeps it cheap on small clusters. notify must not block: a work queue that
// coalesces IDs is the intended receiver. Changes the agent makes itself are
// reported too; checking an unchanged deployment is cheap.
//
// Watching does not replace a periodic Status: a watch can miss nothing
// while it runs, but readiness of some kinds depends on time. Watch returns
// only when ctx ends; API errors are logged and retried.
func (a *Applier) Watch(ctx context.Context, notify func(id string)) error {
	listed := false
	running := map[schema.GroupVersionResource]context.CancelFunc{}
	defer func() {
		for _, stop := range running {
			stop()
		}
	}()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		retryLater := false
		if !listed {
			// Deployments applied by an earlier run of the agent; those
			// applied from now on are noted as they are.
			invs, err := a.listInventories(ctx)
			if err != nil {
				a.log.Warn("watch: cannot list inventories; retrying", "err", err)
				retryLater = true
			}
			for _, inv := range invs {
				a.noteInventory(inv)
			}
			listed = err == nil
		}
		a.knownMu.Lock()
		changed := a.knownChanged
		kinds := map[schema.GroupVersionKind]bool{}
		for _, refs := range a.known {
			for _, r := range refs {
				kinds[r.gvk()] = true
			}
		}
		a.knownMu.Unlock()

		want := map[schema.GroupVersionResource]bool{}
		for gvk := range kinds {
			m, err := a.mapping(gvk)
			if err != nil {
				// A kind whose CRD is not served (yet); try again later.
				a.log.Debug("not watching kind", "kind", gvk.String(), "err", err)
				retryLater = true
				continue
			}
			want[m.Resource] = true
		}
		for gvr, stop := range running {
			if !want[gvr] {
				stop()
				delete(running, gvr)
				a.log.Debug("stopped watching", "resource", gvr.String())
			}
		}
		for gvr := range want {
			if running[gvr] == nil {
				running[gvr] = a.watchResource(ctx, gvr, notify)
				a.log.Debug("watching", "resource", gvr.String())
			}
		}
		if retryLater {
			retry.Reset(30 * time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-retry.C:
		}
	}
}

// watchResource starts a metadata informer over one resource's labelled
// objects and returns the function that stops it.
func (a *Applier) watchResource(ctx context.Context, gvr schema.GroupVersionResource, notify func(id string)) context.CancelFunc {
	ctx, cancel := context.WithCancel(ctx)
	inf := metadatainformer.NewFilteredMetadataInformer(a.metadata, gvr, metav1.NamespaceAll, 0, cache.Indexers{},
		// Inventories carry the label too, for people looking; they change
		// only when the agent applies, which needs no notification.
		func(o *metav1.ListOptions) { o.LabelSelector = LabelBundleID + ",!" + labelInventory }).Informer()
	// Managed fields are most of an object's metadata and unused here.
	_ = inf.SetTransform(func(obj any) (any, error) {
		if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
			m.ManagedFields = nil
		}
		return obj, nil
	})
	send := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		m, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok {
			return
		}
		if id := m.Annotations[AnnotationBundleID]; id != "" {
			notify(id)
		}
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, initial bool) {
			// The initial list reports what exists already; the agent
			// checks every deployment when it starts anyway.
			if !initial {
				send(obj)
			}
		},
		UpdateFunc: func(_, obj any) { send(obj) },
		DeleteFunc: send,
	})
	if err != nil {
		a.log.Error("cannot watch", "resource", gvr.String(), "err", fmt.Errorf("adding event handler: %w", err))
		return cancel
	}
	go inf.RunWithContext(ctx)
	return cancel
}
