package agent

import (
	"bytes"
	"strings"
	"testing"
)

// The help names each flag's argument by its type, not by words meant as a quotation (the
// flag package takes `quoted` words for the argument's name).
func TestFlagHelpNamesNoQuotation(t *testing.T) {
	var help bytes.Buffer
	parseFlags([]string{"-help"}, func(string) string { return "" }, &help)
	for _, l := range strings.Split(help.String(), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "-") && strings.Contains(l, " flotilla ") {
			t.Errorf("flag help line %q names its argument after a command", l)
		}
	}
	if !strings.Contains(help.String(), "-ca-checksum string") {
		t.Errorf("help lacks -ca-checksum string:\n%s", help.String())
	}
}
