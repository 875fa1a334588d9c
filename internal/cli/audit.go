package cli

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

func newAuditCmd(g *globals) *cobra.Command {
	var q client.AuditQuery
	var output string
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit log: every change and every denied call (admins only)",
		Long: `Show the audit log, oldest first: every create, update, patch and delete, every other
mutating call (login, registration, token revocation, key rotation) and every call refused
with 401 or 403, with who made it, from where, on which object, and how it ended. Request
bodies, headers and credentials are never recorded.`,
		Example: `  flotilla audit --since 1h
  flotilla audit --user alice --kind Bundle --since 2026-12-01T00:00:00Z
  flotilla audit --result denied -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "" && output != "json" {
				return fmt.Errorf("--output %q: want json, or nothing for a table", output)
			}
			if q.Limit < 1 || q.Limit > 100000 {
				return fmt.Errorf("--limit must be 1 to 100000, not %d", q.Limit)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			want := q.Limit
			var items []api.AuditRecord
			var dropped int64
			for len(items) < want {
				q.Limit = min(want-len(items), 1000)
				page, err := c.Audit(cmd.Context(), q)
				if err != nil {
					return err
				}
				items = append(items, page.Items...)
				dropped = page.Dropped
				if page.Continue == "" {
					break
				}
				q.Continue = page.Continue
			}
			// Records written together are stored in any order among themselves.
			sort.SliceStable(items, func(i, j int) bool { return items[i].Time.Before(items[j].Time) })
			if output == "json" {
				enc := json.NewEncoder(g.out)
				enc.SetIndent("", "  ")
				return enc.Encode(api.AuditRecordList{Items: items, Dropped: dropped})
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "TIME\tUSER\tVERB\tKIND\tOBJECT\tRESULT\tSOURCE\tREQUEST-ID")
			for _, r := range items {
				obj := r.Name
				if r.Namespace != "" {
					obj = r.Namespace + "/" + r.Name
				}
				if obj == "" {
					obj = r.Path
				}
				result := fmt.Sprint(r.Code)
				if r.Reason != "" {
					result += " " + r.Reason
				}
				verb := r.Verb
				if r.DryRun {
					verb += " (dry run)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.UTC().Format(time.RFC3339), dash(r.User), verb,
					dash(r.Kind), dash(obj), result, dash(r.Source), r.RequestID)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if dropped > 0 {
				fmt.Fprintf(g.errOut, "warning: the server dropped %d audit records since it started (its write queue was full)\n", dropped)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&q.User, "user", "", "only calls by this user")
	f.StringVar(&q.Since, "since", "24h", "only calls since this RFC 3339 time or this long ago (e.g. 1h); empty for the whole log")
	f.StringVar(&q.Until, "until", "", "only calls until this RFC 3339 time or this long ago")
	f.StringVar(&q.Verb, "verb", "", "only this verb: create, update, patch, delete, login, register, …")
	f.StringVar(&q.Kind, "kind", "", "only calls on this kind, e.g. Bundle")
	f.StringVar(&q.Result, "result", "", "only calls that ended so: ok, denied, error, or an HTTP code")
	f.IntVar(&q.Limit, "limit", 100, "show at most this many records")
	f.StringVarP(&output, "output", "o", "", "output format: json (default a table)")
	return cmd
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
