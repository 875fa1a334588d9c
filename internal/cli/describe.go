package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
)

func newDescribeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "describe KIND NAME",
		Short: "Show an object in detail: metadata, spec, status and conditions",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, ok := api.LookupKind(args[0])
			if !ok {
				return fmt.Errorf("unknown kind %q: Flotilla serves %s", args[0], kindList())
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			o, err := c.Get(cmd.Context(), kind.Kind, g.ns(), args[1])
			if err != nil {
				return err
			}
			return describe(g.out, o)
		},
	}
}

func describe(w io.Writer, o *api.Object) error {
	m := o.Metadata
	fmt.Fprintf(w, "Name:              %s\n", m.Name)
	fmt.Fprintf(w, "Namespace:         %s\n", m.Namespace)
	fmt.Fprintf(w, "Kind:              %s\n", o.Kind)
	fmt.Fprintf(w, "Labels:            %s\n", indentMap(m.Labels))
	fmt.Fprintf(w, "Annotations:       %s\n", indentMap(m.Annotations))
	if m.CreationTimestamp != nil {
		fmt.Fprintf(w, "Created:           %s (%s ago)\n", m.CreationTimestamp.UTC().Format("2006-01-02T15:04:05Z"), api.Age(o, time.Now()))
	}
	fmt.Fprintf(w, "UID:               %s\n", m.UID)
	fmt.Fprintf(w, "Generation:        %d\n", m.Generation)
	fmt.Fprintf(w, "Resource Version:  %s\n", m.ResourceVersion)
	section(w, "Spec", o.Spec)
	var conds struct {
		Conditions []api.Condition `json:"conditions"`
	}
	if len(o.Status) > 0 {
		json.Unmarshal(o.Status, &conds)
	}
	section(w, "Status", withoutConditions(o.Status))
	if len(conds.Conditions) > 0 {
		fmt.Fprintln(w, "Conditions:")
		fmt.Fprintf(w, "  %-20s %-7s %-24s %s\n", "TYPE", "STATUS", "REASON", "MESSAGE")
		for _, c := range conds.Conditions {
			fmt.Fprintf(w, "  %-20s %-7s %-24s %s\n", c.Type, c.Status, c.Reason, c.Message)
		}
	}
	return nil
}

func section(w io.Writer, title string, raw json.RawMessage) {
	if len(raw) == 0 || string(raw) == "{}" || string(raw) == "null" {
		fmt.Fprintf(w, "%s:              <none>\n", title)
		return
	}
	y, err := yaml.JSONToYAML(raw)
	if err != nil {
		return
	}
	fmt.Fprintf(w, "%s:\n", title)
	for _, l := range strings.Split(strings.TrimRight(string(y), "\n"), "\n") {
		fmt.Fprintf(w, "  %s\n", l)
	}
}

func indentMap(m map[string]string) string {
	if len(m) == 0 {
		return "<none>"
	}
	s := api.LabelString(m)
	return strings.ReplaceAll(s, ",", "\n                   ")
}

// withoutConditions drops status.conditions, which describe prints as a table of their own.
func withoutConditions(status json.RawMessage) json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(status, &m) != nil {
		return status
	}
	if _, ok := m["conditions"]; !ok {
		return status
	}
	delete(m, "conditions")
	out, err := json.Marshal(m)
	if err != nil {
		return status
	}
	return out
}
