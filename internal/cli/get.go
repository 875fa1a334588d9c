package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

func newGetCmd(g *globals) *cobra.Command {
	var selector, output string
	var watch bool
	cmd := &cobra.Command{
		Use:   "get KIND [NAME...]",
		Short: "Show objects as a table, YAML or JSON",
		Example: `  flotilla get clusters -l env=prod -o wide
  flotilla get bundle my-app -o yaml
  flotilla get clusters -A -w`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, ok := api.LookupKind(args[0])
			if !ok {
				return fmt.Errorf("unknown kind %q: Flotilla serves %s", args[0], kindList())
			}
			if err := checkOutput(output); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ns := g.ns()
			if g.allNamespaces {
				ns = ""
			}
			var objs []*api.Object
			rv := ""
			if len(args) > 1 {
				for _, name := range args[1:] {
					o, err := c.Get(ctx, kind.Kind, g.ns(), name)
					if err != nil {
						return err
					}
					objs = append(objs, o)
				}
			} else {
				l, err := c.ListAll(ctx, kind.Kind, ns, selector)
				if err != nil {
					return err
				}
				rv = l.Metadata.ResourceVersion
				for _, it := range l.Items {
					var o api.Object
					if err := json.Unmarshal(it, &o); err != nil {
						return err
					}
					objs = append(objs, &o)
				}
			}
			p := &printer{out: g.out, kind: kind, output: output, showNS: g.allNamespaces}
			if err := p.print(objs, len(args) == 2); err != nil {
				return err
			}
			if !watch {
				return nil
			}
			return watchObjects(ctx, c, p, kind, ns, selector, rv)
		},
	}
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "label selector, e.g. env=prod,tier!=db")
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: wide, yaml, json or name")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "after listing, watch for changes")
	cmd.Flags().BoolVarP(&g.allNamespaces, "all-namespaces", "A", false, "all namespaces")
	return cmd
}

func checkOutput(o string) error {
	switch o {
	case "", "wide", "yaml", "json", "name":
		return nil
	}
	return fmt.Errorf("unknown output format %q: use wide, yaml, json or name", o)
}

func watchObjects(ctx context.Context, c *client.Client, p *printer, kind api.KindInfo, ns, selector, rv string) error {
	ch, err := c.Watch(ctx, kind.Kind, ns, selector, rv)
	if err != nil {
		return err
	}
	p.noHeader = true
	for ev := range ch {
		switch ev.Type {
		case api.Bookmark:
			continue
		case api.Error:
			var st api.Status
			json.Unmarshal(ev.Object, &st)
			return &st
		}
		var o api.Object
		if err := json.Unmarshal(ev.Object, &o); err != nil {
			return err
		}
		p.event = ev.Type
		if err := p.print([]*api.Object{&o}, true); err != nil {
			return err
		}
	}
	return ctx.Err()
}

type printer struct {
	out      io.Writer
	kind     api.KindInfo
	output   string
	showNS   bool
	noHeader bool
	event    string
}

func (p *printer) print(objs []*api.Object, single bool) error {
	switch p.output {
	case "json", "yaml":
		var v any = objs
		if single && len(objs) == 1 {
			v = objs[0]
		} else {
			v = map[string]any{"apiVersion": "v1", "kind": "List", "items": objs}
		}
		if p.event != "" {
			v = map[string]any{"type": p.event, "object": objs[0]}
		}
		if p.output == "json" {
			data, err := json.MarshalIndent(v, "", "  ")
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(p.out, "%s\n", data)
			return err
		}
		data, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		if p.event != "" || (!single && p.noHeader) {
			io.WriteString(p.out, "---\n")
		}
		_, err = p.out.Write(data)
		return err
	case "name":
		for _, o := range objs {
			fmt.Fprintf(p.out, "%s/%s\n", strings.ToLower(o.Kind)+"."+api.Group, o.Metadata.Name)
		}
		return nil
	}
	if len(objs) == 0 && !p.noHeader {
		fmt.Fprintf(p.out, "No %s found.\n", p.kind.Plural)
		return nil
	}
	cols := columnsFor(p.kind.Kind)
	tw := tabwriter.NewWriter(p.out, 0, 4, 3, ' ', 0)
	if !p.noHeader {
		var h []string
		if p.event != "" {
			h = append(h, "EVENT")
		}
		if p.showNS {
			h = append(h, "NAMESPACE")
		}
		h = append(h, "NAME")
		for _, c := range cols {
			if !c.wide || p.output == "wide" {
				h = append(h, c.name)
			}
		}
		fmt.Fprintln(tw, strings.Join(h, "\t"))
	}
	for _, o := range objs {
		var row []string
		if p.event != "" {
			row = append(row, p.event)
		}
		if p.showNS {
			row = append(row, o.Metadata.Namespace)
		}
		row = append(row, o.Metadata.Name)
		for _, c := range cols {
			if !c.wide || p.output == "wide" {
				row = append(row, c.value(o))
			}
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

type column struct {
	name  string
	wide  bool
	value func(*api.Object) string
}

func decodeInto[T any](raw json.RawMessage) T {
	var v T
	if len(raw) > 0 {
		json.Unmarshal(raw, &v)
	}
	return v
}

func age(o *api.Object) string {
	if o.Metadata.CreationTimestamp == nil {
		return "<unknown>"
	}
	return shortDuration(time.Since(*o.Metadata.CreationTimestamp))
}

func shortDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

func labelString(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + l[k]
	}
	return orNone(strings.Join(keys, ","))
}

func readyCount(s *api.Summary) string {
	if s == nil {
		return "0/0"
	}
	return fmt.Sprintf("%d/%d", s.Ready, s.DesiredReady)
}

func columnsFor(kind string) []column {
	ageCol := column{name: "AGE", value: age}
	labelsCol := column{name: "LABELS", wide: true, value: func(o *api.Object) string { return labelString(o.Metadata.Labels) }}
	switch kind {
	case api.KindCluster:
		st := func(o *api.Object) api.ClusterStatus { return decodeInto[api.ClusterStatus](o.Status) }
		inv := func(o *api.Object) api.ClusterInventory {
			if i := st(o).Inventory; i != nil {
				return *i
			}
			return api.ClusterInventory{}
		}
		return []column{
			{name: "BUNDLES-READY", value: func(o *api.Object) string { return readyCount(st(o).Summary) }},
			{name: "STATE", value: func(o *api.Object) string { return orNone(st(o).State) }},
			{name: "K8S-VERSION", value: func(o *api.Object) string { return orNone(inv(o).KubernetesVersion) }},
			{name: "NODES", value: func(o *api.Object) string { return fmt.Sprint(inv(o).NodeCount) }},
			{name: "LAST-SEEN", value: func(o *api.Object) string {
				if t := st(o).LastSeen; t != nil {
					return shortDuration(time.Since(*t))
				}
				return "<never>"
			}},
			ageCol,
			{name: "ARCH", wide: true, value: func(o *api.Object) string { return orNone(inv(o).Architecture) }},
			{name: "AGENT", wide: true, value: func(o *api.Object) string { return orNone(inv(o).AgentVersion) }},
			labelsCol,
		}
	case api.KindClusterGroup:
		st := func(o *api.Object) api.ClusterGroupStatus { return decodeInto[api.ClusterGroupStatus](o.Status) }
		return []column{
			{name: "CLUSTERS", value: func(o *api.Object) string { return fmt.Sprint(st(o).ClusterCount) }},
			{name: "NOT-READY", value: func(o *api.Object) string { return fmt.Sprint(st(o).NonReadyClusterCount) }},
			ageCol,
			{name: "SELECTOR", wide: true, value: func(o *api.Object) string {
				s := decodeInto[api.ClusterGroupSpec](o.Spec).Selector
				if s == nil {
					return "<none>"
				}
				b, _ := json.Marshal(s)
				return string(b)
			}},
		}
	case api.KindRegistrationToken:
		return []column{
			{name: "USES", value: func(o *api.Object) string {
				return fmt.Sprint(decodeInto[api.RegistrationTokenStatus](o.Status).Uses)
			}},
			{name: "MAX-USES", value: func(o *api.Object) string {
				if n := decodeInto[api.RegistrationTokenSpec](o.Spec).MaxUses; n > 0 {
					return fmt.Sprint(n)
				}
				return "<unlimited>"
			}},
			{name: "EXPIRES", value: func(o *api.Object) string {
				if t := decodeInto[api.RegistrationTokenStatus](o.Status).Expires; t != nil {
					return t.UTC().Format(time.RFC3339)
				}
				return "<never>"
			}},
			ageCol,
		}
	case api.KindGitRepo:
		spec := func(o *api.Object) api.GitRepoSpec { return decodeInto[api.GitRepoSpec](o.Spec) }
		st := func(o *api.Object) api.GitRepoStatus { return decodeInto[api.GitRepoStatus](o.Status) }
		return []column{
			{name: "REPO", value: func(o *api.Object) string { return spec(o).Repo }},
			{name: "COMMIT", value: func(o *api.Object) string {
				c := st(o).Commit
				if len(c) > 12 {
					c = c[:12]
				}
				return orNone(c)
			}},
			{name: "BUNDLES-READY", value: func(o *api.Object) string { return readyCount(st(o).Summary) }},
			{name: "STATUS", value: func(o *api.Object) string { return orNone(st(o).Error) }},
			ageCol,
			{name: "BRANCH", wide: true, value: func(o *api.Object) string { return orNone(first(spec(o).Revision, spec(o).Branch)) }},
			{name: "PATHS", wide: true, value: func(o *api.Object) string { return orNone(strings.Join(spec(o).Paths, ",")) }},
		}
	case api.KindBundle:
		st := func(o *api.Object) api.BundleStatus { return decodeInto[api.BundleStatus](o.Status) }
		return []column{
			{name: "DEPLOYMENTS-READY", value: func(o *api.Object) string { return readyCount(st(o).Summary) }},
			{name: "STATUS", value: func(o *api.Object) string {
				s := st(o).Summary
				if s == nil || len(s.NonReadyResources) == 0 {
					return ""
				}
				r := s.NonReadyResources[0]
				return fmt.Sprintf("%s(%d) [%s: %s]", r.State, s.DesiredReady-s.Ready, r.Name, r.Message)
			}},
			ageCol,
			{name: "CONTENT", wide: true, value: func(o *api.Object) string {
				h := decodeInto[api.BundleSpec](o.Spec).ContentHash
				if len(h) > 19 {
					h = h[:19]
				}
				return orNone(h)
			}},
			labelsCol,
		}
	}
	return []column{ageCol}
}
