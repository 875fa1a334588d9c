package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"flotilla.dev/api"
	"flotilla.dev/internal/bundle"
	"flotilla.dev/internal/resource"
	"flotilla.dev/internal/store"
)

// BundleHooks store a bundle's content once, by digest: inline resources (Fleet's Bundle
// format) are packed into an archive in the content store and replaced by its digest, so a
// Bundle object stays small however large its content, and a digest given directly must
// name stored content.
type BundleHooks struct {
	st     store.Agents
	limits bundle.Limits
}

// NewBundleHooks returns the hooks for Bundle.
func NewBundleHooks(st store.Agents) *BundleHooks {
	return &BundleHooks{st: st, limits: bundle.DefaultLimits()}
}

func invalid(obj *api.Object, field, msg string) error {
	return resource.Invalid(obj.Kind, obj.Metadata.Name, []api.StatusCause{{Field: field, Message: msg}})
}

func (h *BundleHooks) prepare(ctx context.Context, obj *api.Object, dryRun bool) error {
	var spec api.BundleSpec
	if err := json.Unmarshal(obj.Spec, &spec); err != nil {
		return err
	}
	switch {
	case len(spec.Resources) > 0:
		files, err := bundle.DecodeResources(spec.Resources, h.limits)
		var re *bundle.ResourceError
		if errors.As(err, &re) {
			return invalid(obj, fmt.Sprintf("spec.resources[%d].%s", re.Index, re.Field), re.Err.Error())
		}
		if err == nil {
			err = h.limits.Check(files)
		}
		if err != nil {
			if errors.Is(err, bundle.ErrTooLarge) {
				return &api.Status{Status: "Failure", Code: 413, Reason: api.ReasonTooLarge, Message: fmt.Sprintf("Bundle %q: %v", obj.Metadata.Name, err)}
			}
			return invalid(obj, "spec.resources", err.Error())
		}
		data, digest, err := bundle.Pack(files)
		if err != nil {
			return invalid(obj, "spec.resources", err.Error())
		}
		if spec.ContentHash != "" && spec.ContentHash != digest {
			return invalid(obj, "spec.contentHash", fmt.Sprintf("does not match the resources given (%s)", digest))
		}
		if !dryRun {
			if err := h.st.PutContent(ctx, digest, data); err != nil {
				return fmt.Errorf("storing bundle content: %w", err)
			}
		}
		spec.ContentHash = digest
		spec.Resources = nil
	case spec.ContentHash != "":
		if _, err := h.st.GetContent(ctx, spec.ContentHash); errors.Is(err, store.ErrNotFound) {
			return invalid(obj, "spec.contentHash", "no content stored under this digest")
		} else if err != nil {
			return err
		}
	default:
		return invalid(obj, "spec.resources", "a bundle needs resources (or the contentHash of stored content)")
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	obj.Spec = raw
	return nil
}

// BeforeCreate packs inline resources.
func (h *BundleHooks) BeforeCreate(ctx context.Context, obj *api.Object, dryRun bool) error {
	return h.prepare(ctx, obj, dryRun)
}

// AfterCreate does nothing.
func (h *BundleHooks) AfterCreate(context.Context, *api.Object) error { return nil }

// BeforeUpdate packs inline resources.
func (h *BundleHooks) BeforeUpdate(ctx context.Context, old, obj *api.Object, dryRun bool) error {
	return h.prepare(ctx, obj, dryRun)
}
