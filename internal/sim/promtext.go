package sim

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// serverMetrics is one scrape of the server's /metrics: every sample by name, with its
// labels.
type serverMetrics map[string][]sample

type sample struct {
	labels map[string]string
	value  float64
}

// value returns the sum of name's samples whose labels contain match (nil matches all);
// ok is false when there is no such sample.
func (m serverMetrics) value(name string, match func(map[string]string) bool) (float64, bool) {
	var sum float64
	found := false
	for _, s := range m[name] {
		if match == nil || match(s.labels) {
			sum += s.value
			found = true
		}
	}
	return sum, found
}

// parsePromText reads the Prometheus text exposition format, enough of it for the
// simulator's needs: samples, labels with escaped values; comments skipped.
func parsePromText(r io.Reader) (serverMetrics, error) {
	m := serverMetrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		var labels map[string]string
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if strings.HasPrefix(rest, "{") {
			var err error
			labels, rest, err = parseLabels(rest[1:])
			if err != nil {
				return nil, fmt.Errorf("metric %s: %w", name, err)
			}
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("metric %s: no value", name)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", name, err)
		}
		m[name] = append(m[name], sample{labels: labels, value: v})
	}
	return m, sc.Err()
}

// parseLabels reads `a="x",b="y"}` and returns what follows the brace.
func parseLabels(s string) (map[string]string, string, error) {
	out := map[string]string{}
	for {
		s = strings.TrimLeft(s, " ,")
		if strings.HasPrefix(s, "}") {
			return out, s[1:], nil
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 || len(s) < eq+2 || s[eq+1] != '"' {
			return nil, "", fmt.Errorf("malformed labels near %q", s)
		}
		key := strings.TrimSpace(s[:eq])
		s = s[eq+2:]
		var b strings.Builder
		closed := false
		for i := 0; i < len(s); i++ {
			c := s[i]
			if c == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					b.WriteByte('\n')
				default:
					b.WriteByte(s[i])
				}
				continue
			}
			if c == '"' {
				s = s[i+1:]
				closed = true
				break
			}
			b.WriteByte(c)
		}
		if !closed {
			return nil, "", fmt.Errorf("unterminated label value for %s", key)
		}
		out[key] = b.String()
	}
}

// scrape reads the server's /metrics with the admin token.
func scrape(ctx context.Context, hc *http.Client, server, token string) (serverMetrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(server, "/")+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading the server's metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("reading the server's metrics: %s", resp.Status)
	}
	return parsePromText(resp.Body)
}
