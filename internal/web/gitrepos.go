package web

import (
	"encoding/json"
	"net/http"

	"flotilla.dev/api"
)

// syncGitRepo forces a GitRepo to fetch and redeploy now, as Fleet does: its
// spec.forceSyncGeneration is incremented through the API as the user (a spec change makes
// the server fetch at once, and the new value reaches every bundle it made, which redeploys
// them). The patch carries the resourceVersion it read: a concurrent change is retried on
// the new version, never overwritten.
func (h *Handler) syncGitRepo(w http.ResponseWriter, r *http.Request, u *user) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	path := objectPath("gitrepos", ns, name)
	var res apiResult
	for range 3 {
		res = h.call(r, u.token, http.MethodGet, path, "", nil)
		if res.code != http.StatusOK {
			break
		}
		var obj api.Object
		var spec api.GitRepoSpec
		if json.Unmarshal(res.body, &obj) != nil || json.Unmarshal(obj.Spec, &spec) != nil {
			h.errorPage(w, r, u, http.StatusInternalServerError, "The GitRepo could not be read.")
			return
		}
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": obj.Metadata.ResourceVersion},
			"spec": map[string]any{"forceSyncGeneration": spec.ForceSyncGeneration + 1}})
		res = h.call(r, u.token, http.MethodPatch, path, "application/merge-patch+json", patch)
		if res.code != http.StatusConflict {
			break
		}
	}
	if res.code != http.StatusOK {
		h.errorPage(w, r, u, res.code, refusal(res))
		return
	}
	http.Redirect(w, r, "/gitrepos?done=synced", http.StatusSeeOther)
}
