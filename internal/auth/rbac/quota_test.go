package rbac

import (
	"testing"
	"time"

	"flotilla.dev/api"
)

func TestProjectStatus(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	spec := api.ProjectSpec{Quota: &api.ResourceQuotaSpec{Hard: map[string]string{"requests.cpu": "4", "pods": "10"}}}
	tests := []struct {
		name       string
		spec       api.ProjectSpec
		usage      ProjectUsage
		wantUsed   map[string]string
		wantStatus string // OverQuota's status; "" for no condition
		wantMsg    string
	}{
		{"no usage", spec, nil, nil, "False", ""},
		{"within", spec, ProjectUsage{"c1": {"a": {"requests.cpu": "1500m"}, "b": {"requests.cpu": "2", "pods": "3"}}}, map[string]string{"requests.cpu": "3500m", "pods": "3"}, "False", ""},
		{"at the total", spec, ProjectUsage{"c1": {"a": {"requests.cpu": "4"}}}, map[string]string{"requests.cpu": "4"}, "False", ""},
		{"over on one cluster", spec, ProjectUsage{
			"c1": {"a": {"requests.cpu": "3"}, "b": {"requests.cpu": "2"}},
			"c2": {"a": {"requests.cpu": "1", "pods": "11"}},
		}, map[string]string{"requests.cpu": "5", "pods": "11"}, "True", "requests.cpu on cluster c1: 5 used of 4 (and 1 more)"},
		{"garbage ignored", spec, ProjectUsage{"c1": {"a": {"requests.cpu": "lots", "pods": "2"}}}, map[string]string{"pods": "2"}, "False", ""},
		{"no total", api.ProjectSpec{}, ProjectUsage{"c1": {"a": {"pods": "2"}}}, map[string]string{"pods": "2"}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := ProjectStatus(tt.spec, tt.usage, now)
			if len(st.Used) != len(tt.wantUsed) {
				t.Fatalf("used %v, want %v", st.Used, tt.wantUsed)
			}
			for k, v := range tt.wantUsed {
				if st.Used[k] != v {
					t.Fatalf("used %v, want %v", st.Used, tt.wantUsed)
				}
			}
			if tt.wantStatus == "" {
				if len(st.Conditions) != 0 {
					t.Fatalf("conditions %+v, want none", st.Conditions)
				}
				return
			}
			c := st.Conditions[0]
			if c.Type != api.ConditionOverQuota || c.Status != tt.wantStatus || c.Message != tt.wantMsg {
				t.Fatalf("condition %+v, want OverQuota=%s %q", c, tt.wantStatus, tt.wantMsg)
			}
		})
	}
}
