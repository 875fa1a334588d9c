package agentapi

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"flotilla.dev/api"
)

// An access report is refused whole when anything in it is malformed or over a budget.
func TestDecodeReportAccess(t *testing.T) {
	ok := api.AccessReport{Digest: "sha256:ab", Usage: map[string]map[string]map[string]string{"shop": {"web": {"pods": "3", "requests.cpu": "500m"}}}}
	big := map[string]map[string]string{}
	for i := range maxUsageEntries + 1 {
		big[fmt.Sprintf("ns-%d", i)] = map[string]string{"pods": "1"}
	}
	for _, tc := range []struct {
		name string
		rep  api.AccessReport
		want string // "" when accepted
	}{
		{"well formed", ok, ""},
		{"quantity", api.AccessReport{Usage: map[string]map[string]map[string]string{"shop": {"web": {"pods": "lots"}}}}, "not a quantity"},
		{"namespace", api.AccessReport{Usage: map[string]map[string]map[string]string{"shop": {"Web/x": {"pods": "1"}}}}, "namespace"},
		{"project", api.AccessReport{Usage: map[string]map[string]map[string]string{"Shop!": {"web": {"pods": "1"}}}}, "project"},
		{"resource", api.AccessReport{Usage: map[string]map[string]map[string]string{"shop": {"web": {"a b": "1"}}}}, "resource"},
		{"error too long", api.AccessReport{Error: strings.Repeat("x", maxAccessError+1)}, "access.error"},
		{"too many entries", api.AccessReport{Usage: map[string]map[string]map[string]string{"shop": big}}, "more than"},
	} {
		body, _ := json.Marshal(api.StatusReport{Seq: 1, Access: &tc.rep})
		rep, err := decodeReport(body)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.want == "" && rep.Access == nil:
			t.Errorf("%s: access dropped", tc.name)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one mentioning %q", tc.name, err, tc.want)
		}
	}
}
