package cli

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestRoleBindingCreateAndCanI(t *testing.T) {
	c, _ := newCLI(t)
	c.must("apiVersion: flotilla.dev/v1alpha1\nkind: Cluster\nmetadata: {name: dev1, namespace: fleet-default, labels: {env: dev}}\n---\n"+
		"apiVersion: flotilla.dev/v1alpha1\nkind: Cluster\nmetadata: {name: prod1, namespace: fleet-default, labels: {env: prod}}\n", "apply", "-f", "-")
	out := c.must("", "rolebinding", "create", "alice-dev", "--role", "cluster-member", "--user", "alice", "--cluster-selector", "env in (dev)")
	if !strings.Contains(out, "rolebinding/alice-dev created") {
		t.Fatalf("create said %q", out)
	}
	out = c.must("", "get", "rb")
	if !strings.Contains(out, "alice-dev") || !strings.Contains(out, "User/alice") || !strings.Contains(out, "cluster-member") {
		t.Fatalf("get rb:\n%s", out)
	}
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"rolebinding", "create", "x", "--role", "admin", "--global"}, "--user or --group"},
		{[]string{"rolebinding", "create", "x", "--role", "admin", "--user", "u"}, "exactly one scope"},
		{[]string{"rolebinding", "create", "x", "--role", "admin", "--user", "u", "--global", "--cluster", "c"}, "exactly one scope"},
		{[]string{"rolebinding", "create", "x", "--role", "nosuch", "--user", "u", "--global"}, "nosuch"},
		{[]string{"rolebinding", "create", "x", "--role", "cluster-owner", "--user", "u", "--cluster-selector", "env in dev"}, "invalid selector"},
		{[]string{"rolebinding", "create", "x", "--role", "cluster-owner", "--user", "u", "--global"}, "context cluster"},
	} {
		c.fails(bad.want, bad.args...)
	}

	canI := func(want bool, args ...string) {
		t.Helper()
		out, errOut, err := c.run(context.Background(), "", append([]string{"auth", "can-i"}, args...)...)
		var code exitCode
		switch {
		case want && (err != nil || strings.TrimSpace(out) != "yes"):
			t.Fatalf("can-i %v: %q %q %v, want yes", args, out, errOut, err)
		case !want && (!errors.As(err, &code) || code != 1 || strings.TrimSpace(out) != "no"):
			t.Fatalf("can-i %v: %q %q %v, want no and exit status 1", args, out, errOut, err)
		}
		if errOut == "" {
			t.Fatalf("can-i %v gave no reason", args)
		}
	}
	canI(true, "delete", "gitrepos")
	canI(true, "get", "clusters", "dev1", "--as", "alice")
	canI(true, "get", "clusters/dev1", "--as", "alice")
	canI(false, "get", "clusters", "prod1", "--as", "alice")
	canI(false, "delete", "clusters", "dev1", "--as", "alice")
	canI(false, "list", "gitrepos", "--as", "alice")
	c.fails("unknown verb", "auth", "can-i", "fly", "clusters")
}
