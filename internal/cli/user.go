package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/spf13/cobra"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/auth/users"
)

// userKind names the User collection for paths; the kind is global (no namespace).
var userKind = api.KindInfo{Kind: api.KindUser, Plural: "users"}

func newUserCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Manage local users: create, disable, enable, set passwords"}
	cmd.AddCommand(newUserCreateCmd(g), newUserEnableCmd(g, "disable", true), newUserEnableCmd(g, "enable", false), newUserPasswdCmd(g))
	return cmd
}

func newUserCreateCmd(g *globals) *cobra.Command {
	var displayName string
	var passwordStdin bool
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a local user, with a password prompted for or read from stdin",
		Long: `Create a local user. Its password is prompted for (twice) on a terminal, or read from the
first line of stdin with --password-stdin; without either the user exists but cannot log in
until "flotilla user passwd NAME" sets one. Passwords must have at least 12 characters, must
not be the user name, and must not be a commonly used password.`,
		Example: `  flotilla user create alice --display-name "Alice Liddell"
  echo "$PASSWORD" | flotilla user create ci-bot --password-stdin`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, name := cmd.Context(), args[0]
			password := ""
			pw := newPasswordReader(g, passwordStdin)
			if passwordStdin || isTerminal(g) {
				var err error
				if password, err = pw.readNew(fmt.Sprintf("Password for %s: ", name)); err != nil {
					return err
				}
				// Checked before anything is created, so that a refused password leaves nothing.
				if err := users.CheckPassword(name, password); err != nil {
					return fmt.Errorf("password refused: %w", err)
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			spec, _ := json.Marshal(api.UserSpec{DisplayName: displayName, Provider: api.ProviderLocal})
			obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindUser},
				Metadata: api.ObjectMeta{Name: name}, Spec: spec}
			if _, err := c.Do(ctx, http.MethodPost, client.Path(userKind, "", ""), obj, nil); err != nil {
				return fmt.Errorf("creating user %s: %w", name, err)
			}
			if password == "" {
				fmt.Fprintf(g.out, "user %s created; it has no password yet: set one with `flotilla user passwd %s`\n", name, name)
				return nil
			}
			if err := c.SetPassword(ctx, name, api.SetPasswordRequest{Password: password}); err != nil {
				return fmt.Errorf("user %s created, but setting its password failed: %w", name, err)
			}
			fmt.Fprintf(g.out, "user %s created\n", name)
			return nil
		},
	}
	cmd.Flags().StringVar(&displayName, "display-name", "", "the user's full name")
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from the first line of stdin")
	return cmd
}

func newUserEnableCmd(g *globals, verb string, disable bool) *cobra.Command {
	short := "Enable a user again"
	if disable {
		short = "Disable a user: it cannot log in, and every session and token it holds stops working at once"
	}
	return &cobra.Command{
		Use:   verb + " NAME",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := setUserDisabled(cmd.Context(), c, args[0], disable); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "user %s %sd\n", args[0], verb)
			return nil
		},
	}
}

// setUserDisabled changes spec.disabled of a User, keeping the rest of the object as stored
// (the update carries its resourceVersion, so a concurrent change is not overwritten).
func setUserDisabled(ctx context.Context, c *client.Client, name string, disabled bool) error {
	var obj api.Object
	path := client.Path(userKind, "", name)
	if _, err := c.Do(ctx, http.MethodGet, path, nil, &obj); err != nil {
		return fmt.Errorf("reading user %s: %w", name, err)
	}
	var spec map[string]any
	if len(obj.Spec) > 0 {
		if err := json.Unmarshal(obj.Spec, &spec); err != nil {
			return fmt.Errorf("reading user %s: %w", name, err)
		}
	}
	if spec == nil {
		spec = map[string]any{}
	}
	if disabled {
		spec["disabled"] = true
	} else {
		delete(spec, "disabled")
	}
	obj.Spec, _ = json.Marshal(spec)
	if _, err := c.Do(ctx, http.MethodPut, path, &obj, nil); err != nil {
		return fmt.Errorf("updating user %s: %w", name, err)
	}
	return nil
}

func newUserPasswdCmd(g *globals) *cobra.Command {
	var passwordStdin bool
	cmd := &cobra.Command{
		Use:   "passwd [NAME]",
		Short: "Set a local user's password: your own (asking for the current one), or, for admins, anyone's",
		Long: `Set a password. Without NAME, or with your own name, it is yours, and your current password
is asked for first (admins are not asked). With --password-stdin the passwords are read from
stdin, one per line: the current one first when it is asked for, then the new one.`,
		Example: `  flotilla user passwd
  printf '%s\n%s\n' "$OLD" "$NEW" | flotilla user passwd --password-stdin
  echo "$NEW" | flotilla user passwd alice --password-stdin`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.client()
			if err != nil {
				return err
			}
			me, err := c.WhoAmI(ctx)
			if err != nil {
				return err
			}
			name := me.User
			if len(args) == 1 {
				name = args[0]
			}
			pw := newPasswordReader(g, passwordStdin)
			var req api.SetPasswordRequest
			if name == me.User && !me.Admin {
				if req.OldPassword, err = pw.read("Current password: "); err != nil {
					return err
				}
			}
			if req.Password, err = pw.readNew(fmt.Sprintf("New password for %s: ", name)); err != nil {
				return err
			}
			if err := users.CheckPassword(name, req.Password); err != nil {
				return fmt.Errorf("password refused: %w", err)
			}
			if err := c.SetPassword(ctx, name, req); err != nil {
				return fmt.Errorf("setting the password of %s: %w", name, err)
			}
			fmt.Fprintf(g.out, "password of %s set\n", name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password(s) from stdin, one per line")
	return cmd
}
