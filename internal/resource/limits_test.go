package resource

import (
	"encoding/json"
	"strings"
	"testing"

	"flotilla.dev/api"
)

// Values an attacker sent that were stored and then hurt the server or made no sense; each is
// refused with a message naming the field and the rule.
func TestRefusedValues(t *testing.T) {
	tests := []struct {
		name, kind, spec string
		want             string // "field: message" the error must hold; "" if valid
	}{
		{"polling 1ns", api.KindGitRepo, `{"repo":"https://h/r","pollingInterval":"1ns"}`, `spec.pollingInterval: must be a duration of at least 1s such as 15s, not "1ns"`},
		{"polling 999ms", api.KindGitRepo, `{"repo":"https://h/r","pollingInterval":"999ms"}`, `spec.pollingInterval: must be a duration of at least 1s`},
		{"polling 1s", api.KindGitRepo, `{"repo":"https://h/r","pollingInterval":"1s"}`, ""},
		{"polling default", api.KindGitRepo, `{"repo":"https://h/r"}`, ""},
		{"gitrepo forceSyncGeneration", api.KindGitRepo, `{"repo":"https://h/r","forceSyncGeneration":-1}`, "spec.forceSyncGeneration: must not be negative, not -1"},
		{"maxUnavailable -5", api.KindBundle, `{"rolloutStrategy":{"maxUnavailable":-5}}`, "spec.rolloutStrategy.maxUnavailable: must be a count of at least 0, not -5"},
		{"maxUnavailable -50%", api.KindBundle, `{"rolloutStrategy":{"maxUnavailable":"-50%"}}`, `spec.rolloutStrategy.maxUnavailable: must be a percentage from 0% to 100%, not "-50%"`},
		{"maxUnavailable 101%", api.KindBundle, `{"rolloutStrategy":{"maxUnavailable":"101%"}}`, `must be a percentage from 0% to 100%, not "101%"`},
		{"maxUnavailable +5", api.KindBundle, `{"rolloutStrategy":{"maxUnavailable":"+5"}}`, `must be a count or a percentage such as 3 or 25%, not "+5"`},
		{"maxUnavailable words", api.KindBundle, `{"rolloutStrategy":{"maxUnavailable":"half"}}`, `must be a count or a percentage such as 3 or 25%, not "half"`},
		{"maxUnavailable 0 and 100%", api.KindBundle, `{"rolloutStrategy":{"maxUnavailable":0,"maxUnavailablePartitions":"100%","autoPartitionSize":"1%"}}`, ""},
		{"maxUnavailablePartitions -1", api.KindBundle, `{"rolloutStrategy":{"maxUnavailablePartitions":-1}}`, "spec.rolloutStrategy.maxUnavailablePartitions: must be a count of at least 0, not -1"},
		{"autoPartitionSize 0", api.KindBundle, `{"rolloutStrategy":{"autoPartitionSize":0}}`, "spec.rolloutStrategy.autoPartitionSize: must be a count of at least 1, not 0"},
		{"autoPartitionSize 0%", api.KindBundle, `{"rolloutStrategy":{"autoPartitionSize":"0%"}}`, `spec.rolloutStrategy.autoPartitionSize: must be a percentage from 1% to 100%, not "0%"`},
		{"autoPartitionSize 500%", api.KindBundle, `{"rolloutStrategy":{"autoPartitionSize":"500%"}}`, `spec.rolloutStrategy.autoPartitionSize: must be a percentage from 1% to 100%, not "500%"`},
		{"partition maxUnavailable", api.KindBundle, `{"rolloutStrategy":{"partitions":[{"name":"p","maxUnavailable":"-1%"}]}}`, `spec.rolloutStrategy.partitions[0].maxUnavailable: must be a percentage from 0% to 100%`},
		{"timeoutSeconds -1", api.KindBundle, `{"helm":{"timeoutSeconds":-1}}`, "spec.helm.timeoutSeconds: must be from 0 to 86400 seconds, not -1"},
		{"timeoutSeconds huge", api.KindBundle, `{"helm":{"timeoutSeconds":4611686018427387904}}`, "spec.helm.timeoutSeconds: must be from 0 to 86400 seconds"},
		{"maxHistory -1", api.KindBundle, `{"helm":{"maxHistory":-1}}`, "spec.helm.maxHistory: must not be negative, not -1"},
		{"forceSyncGeneration -1", api.KindBundle, `{"forceSyncGeneration":-1}`, "spec.forceSyncGeneration: must not be negative, not -1"},
		{"target options", api.KindBundle, `{"targets":[{"clusterName":"c","helm":{"maxHistory":-2}}]}`, "spec.targets[0].helm.maxHistory: must not be negative, not -2"},
		{"helm fine", api.KindBundle, `{"helm":{"timeoutSeconds":600,"maxHistory":5},"forceSyncGeneration":3}`, ""},
		{"maxUses 2^63", api.KindRegistrationToken, `{"maxUses":9223372036854775808}`, "spec.maxUses"},
		{"maxUses 2^63-1", api.KindRegistrationToken, `{"maxUses":9223372036854775807}`, "spec.maxUses: must be from 0 (unlimited) to 10000000, not 9223372036854775807"},
		{"maxUses -1", api.KindRegistrationToken, `{"maxUses":-1}`, "spec.maxUses: must be from 0 (unlimited) to 10000000, not -1"},
		{"maxUses 10M", api.KindRegistrationToken, `{"maxUses":10000000}`, ""},
		{"stringData redacted", api.KindSecret, `{"stringData":{"k":"**redacted**"}}`, "spec.stringData.k: " + api.SecretRedactedRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: tt.kind},
				Metadata: api.ObjectMeta{Name: "x", Namespace: "ns"}, Spec: json.RawMessage(tt.spec)}
			err := Prepare(obj)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got error %v, want none", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got error %v, want one holding %q", err, tt.want)
			}
			if st, ok := err.(*api.Status); err != nil && (!ok || st.Code != 422) {
				t.Errorf("error %#v is not a 422 Status", err)
			}
		})
	}
}
