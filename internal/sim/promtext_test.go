package sim

import (
	"strings"
	"testing"
)

func TestParsePromText(t *testing.T) {
	text := `# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.2345e+08
process_cpu_seconds_total 12.5
flotilla_http_requests_total{code="304",method="GET",route="GET /v1/agent/desired"} 100
flotilla_http_requests_total{code="200",method="GET",route="GET /v1/agent/desired"} 5
flotilla_http_requests_total{code="200",method="POST",route="POST /v1/agent/status"} 7
weird{a="x\"y,z}",b="\\"} 3
`
	m, err := parsePromText(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	desired := func(l map[string]string) bool { return strings.Contains(l["route"], "/v1/agent/desired") }
	tests := []struct {
		name  string
		match func(map[string]string) bool
		want  float64
	}{
		{"process_resident_memory_bytes", nil, 123450000},
		{"process_cpu_seconds_total", nil, 12.5},
		{"flotilla_http_requests_total", desired, 105},
		{"flotilla_http_requests_total", nil, 112},
		{"weird", func(l map[string]string) bool { return l["a"] == `x"y,z}` && l["b"] == `\` }, 3},
	}
	for _, tt := range tests {
		got, ok := m.value(tt.name, tt.match)
		if !ok || got != tt.want {
			t.Errorf("value(%s) = %v, %v; want %v", tt.name, got, ok, tt.want)
		}
	}
	if _, ok := m.value("absent", nil); ok {
		t.Error("an absent metric was found")
	}
	if _, err := parsePromText(strings.NewReader(`x{a="b} 1`)); err == nil {
		t.Error("an unterminated label value parsed")
	}
}
