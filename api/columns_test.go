package api

import (
	"encoding/json"
	"testing"
	"time"
)

func TestStatusColumns(t *testing.T) {
	sum := func(ready, desired int, bad ...NonReadyResource) *Summary {
		return &Summary{Ready: ready, DesiredReady: desired, NonReadyResources: bad}
	}
	tests := []struct {
		name   string
		kind   string
		status any
		want   string
	}{
		{"bundle ready", KindBundle, BundleStatus{Summary: sum(3, 3), Conditions: []Condition{{Type: "Ready", Status: "True"}}}, "Ready"},
		{"bundle not targeted", KindBundle, BundleStatus{}, "Ready"},
		{"bundle failing", KindBundle, BundleStatus{Summary: sum(1, 3, NonReadyResource{Name: "edge-2", State: StateErrApplied, Message: "boom"})},
			"ErrApplied(2) [edge-2: boom]"},
		{"bundle stalled", KindBundle, BundleStatus{Summary: sum(2, 2), Conditions: []Condition{{Type: "Ready", Status: "False", Message: "rollout stalled"}}},
			"NotReady: rollout stalled"},
		{"gitrepo before its first fetch", KindGitRepo, GitRepoStatus{}, "GitUpdating"},
		{"gitrepo ready", KindGitRepo, GitRepoStatus{Commit: "abc", Summary: sum(4, 4)}, "Ready"},
		{"gitrepo with a failing bundle", KindGitRepo, GitRepoStatus{Commit: "abc", Summary: sum(3, 4, NonReadyResource{Name: "apps-web/edge-1", State: StateNotReady})},
			"NotReady(1) [apps-web/edge-1]"},
		{"gitrepo refused", KindGitRepo, GitRepoStatus{Commit: "abc", Conditions: []Condition{{Type: "Accepted", Status: "False", Reason: "Invalid", Message: "bad fleet.yaml"}}},
			"Invalid: bad fleet.yaml"},
		{"gitrepo fetch error", KindGitRepo, GitRepoStatus{Error: "auth failed"}, "Error: auth failed"},
	}
	for _, tt := range tests {
		raw, _ := json.Marshal(tt.status)
		o := &Object{TypeMeta: TypeMeta{Kind: tt.kind}, Status: raw}
		var got string
		for _, c := range Columns(tt.kind) {
			if c.Name == "STATUS" {
				got = c.Value(o, time.Now())
			}
		}
		if got != tt.want {
			t.Errorf("%s: STATUS %q, want %q", tt.name, got, tt.want)
		}
	}
}
