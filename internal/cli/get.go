package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/util/jsonpath"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

func newGetCmd(g *globals) *cobra.Command {
	var selector, output string
	var watch, noHeaders bool
	cmd := &cobra.Command{
		Use:   "get [KIND [NAME...]]",
		Short: "Show objects as a table, YAML, JSON, names or a JSONPath template; without a kind, list the kinds",
		Example: `  flotilla get
  flotilla get clusters -l env=prod -o wide
  flotilla get bundle my-app -o yaml
  flotilla get gitrepos -o jsonpath='{.items[*].spec.repo}'
  flotilla get clusters -A -w`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return printKinds(g.out, noHeaders)
			}
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
					if watch && interrupted(ctx) {
						return nil
					}
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
			p := &printer{out: g.out, kind: kind, output: output, showNS: g.allNamespaces && !kind.Global, noHeader: noHeaders}
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
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: wide, yaml, json, name or jsonpath=TEMPLATE")
	cmd.Flags().BoolVar(&noHeaders, "no-headers", false, "print tables without their header line")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "after listing, watch for changes")
	cmd.Flags().BoolVarP(&g.allNamespaces, "all-namespaces", "A", false, "all namespaces")
	return cmd
}

func checkOutput(o string) error {
	switch o {
	case "", "wide", "yaml", "json", "name":
		return nil
	}
	if tmpl, ok := strings.CutPrefix(o, "jsonpath="); ok {
		if err := jsonpath.New("output").Parse(tmpl); err != nil {
			return fmt.Errorf("invalid JSONPath template %q: %w", tmpl, err)
		}
		return nil
	}
	return fmt.Errorf("unknown output format %q: use wide, yaml, json, name or jsonpath=TEMPLATE", o)
}

// printKinds lists the kinds the server serves, as `kubectl api-resources` does.
func printKinds(w io.Writer, noHeaders bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	if !noHeaders {
		fmt.Fprintln(tw, "NAME\tSHORTNAMES\tAPIVERSION\tKIND")
	}
	for _, k := range api.Kinds {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.Plural, strings.Join(k.ShortNames, ","), api.APIVersion, k.Kind)
	}
	return tw.Flush()
}

func watchObjects(ctx context.Context, c *client.Client, p *printer, kind api.KindInfo, ns, selector, rv string) error {
	ch, err := c.Watch(ctx, kind.Kind, ns, selector, rv)
	if err != nil {
		if interrupted(ctx) {
			return nil
		}
		return err
	}
	p.noHeader = true
	for ev := range ch {
		if ctx.Err() != nil {
			break
		}
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
	if interrupted(ctx) {
		return nil
	}
	return ctx.Err()
}

// interrupted reports a Ctrl-C: how a watch ends, at whatever stage it is.
func interrupted(ctx context.Context) bool { return errors.Is(ctx.Err(), context.Canceled) }

type printer struct {
	out      io.Writer
	kind     api.KindInfo
	output   string
	showNS   bool
	noHeader bool
	event    string
}

func (p *printer) print(objs []*api.Object, single bool) error {
	for i, o := range objs {
		if o.Metadata.ManagedFields != nil {
			// As kubectl does, leave out the field manager's bookkeeping.
			c := *o
			c.Metadata.ManagedFields = nil
			objs[i] = &c
		}
	}
	if tmpl, ok := strings.CutPrefix(p.output, "jsonpath="); ok {
		return p.jsonpath(tmpl, objs, single)
	}
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
	cols := api.Columns(p.kind.Kind)
	now := time.Now()
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
			if !c.Wide || p.output == "wide" {
				h = append(h, c.Name)
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
			if !c.Wide || p.output == "wide" {
				row = append(row, c.Value(o, now))
			}
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

// jsonpath prints objs through a JSONPath template, over the object itself or, for several,
// over a List of them, as kubectl does.
func (p *printer) jsonpath(tmpl string, objs []*api.Object, single bool) error {
	jp := jsonpath.New("output")
	jp.AllowMissingKeys(true)
	if err := jp.Parse(tmpl); err != nil {
		return fmt.Errorf("invalid JSONPath template %q: %w", tmpl, err)
	}
	var v any = objs
	if single && len(objs) == 1 {
		v = objs[0]
	} else {
		v = map[string]any{"apiVersion": "v1", "kind": "List", "items": objs}
	}
	// Through JSON, so that the template sees the field names the API uses.
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var generic any
	if err := json.Unmarshal(data, &generic); err != nil {
		return err
	}
	if err := jp.Execute(p.out, generic); err != nil {
		return fmt.Errorf("executing the JSONPath template: %w", err)
	}
	if p.event != "" {
		fmt.Fprintln(p.out)
	}
	return nil
}
