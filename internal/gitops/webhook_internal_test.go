package gitops

import "testing"

func TestNormalizeRepoURL(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"https://github.com/org/repo", "github.com/org/repo"},
		{"https://GitHub.com/org/repo.git", "github.com/org/repo"},
		{"https://user:token@github.com/org/repo.git/", "github.com/org/repo"},
		{"git@github.com:org/repo.git", "github.com/org/repo"},
		{"ssh://git@github.com:22/org/repo.git", "github.com/org/repo"},
		{"git://github.com/org/repo", "github.com/org/repo"},
		{"http://127.0.0.1:8080/repo.git", "127.0.0.1/repo"},
		{"", ""},
		{"not a url", ""},
	}
	for _, tt := range tests {
		if got := normalizeRepoURL(tt.in); got != tt.want {
			t.Errorf("normalizeRepoURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://user:pass@example.com/r.git", "https://user:xxxxx@example.com/r.git"},
		{"https://example.com/r.git", "https://example.com/r.git"},
		{"git@example.com:r.git", "git@example.com:r.git"},
	}
	for _, tt := range tests {
		if got := redactURL(tt.in); got != tt.want {
			t.Errorf("redactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
