package bundle

import (
	"strings"
	"testing"
)

func TestBundleName(t *testing.T) {
	long := strings.Repeat("abcdefghij", 6)
	tests := []struct {
		prefix, dir, want string
	}{
		{"repo", ".", "repo"},
		{"repo", "apps/web", "repo-apps-web"},
		{"repo", "apps//web/", "repo-apps-web"},
		{"my-repo", "Apps/Web", "my-repo-apps-web-" + md5Hex("my-repo-Apps-Web", 8)},
		{"repo", "a_b", "repo-a-b-" + md5Hex("repo-a_b", 8)},
		{"repo", long, limitName("repo-"+long, 53)},
		{"", "--", md5Hex("--", 24)},
	}
	for _, tt := range tests {
		got := BundleName(tt.prefix, tt.dir)
		if got != tt.want {
			t.Errorf("BundleName(%q, %q) = %q, want %q", tt.prefix, tt.dir, got, tt.want)
		}
		if len(got) > 53 {
			t.Errorf("BundleName(%q, %q) = %q is over 53 characters", tt.prefix, tt.dir, got)
		}
	}
	if got := limitName("repo-"+long, 53); len(got) != 53 || !strings.HasPrefix(got, "repo-abcdefghij") {
		t.Errorf("limitName = %q, want 53 characters keeping the start", got)
	}
}
