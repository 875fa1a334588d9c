package bundle

import (
	"crypto/md5" //nolint:gosec // names, not security
	"encoding/hex"
	"path"
	"regexp"
	"strings"
)

// maxReleaseNameLen is Helm's limit on release names, which bundle names must also fit.
const maxReleaseNameLen = 53

var (
	disallowedNameChars = regexp.MustCompile(`[^a-zA-Z0-9-]+`)
	multiDash           = regexp.MustCompile(`-+`)
	dnsLabelRE          = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// BundleName derives a bundle's name from the GitRepo's name and the bundle's path in the
// repository, as Fleet does: "/" becomes "-", the result is lowercased and cleaned to a DNS label,
// a hash is appended when cleaning changed anything (so "App" and "app" stay distinct), and names
// over 53 characters are cut and end in a hash.
func BundleName(prefix, dir string) string {
	return releaseName(path.Join(prefix, dir))
}

func releaseName(s string) string {
	orig := s
	s = strings.ReplaceAll(s, "/", "-")
	if s != strings.ToLower(s) || disallowedNameChars.MatchString(s) {
		s = s + "-" + md5Hex(s, 8)
	}
	s = strings.ToLower(s)
	s = disallowedNameChars.ReplaceAllLiteralString(s, "-")
	s = multiDash.ReplaceAllString(s, "-")
	s = strings.Trim(s, "-")
	if dnsLabelRE.MatchString(s) {
		return limitName(s, maxReleaseNameLen)
	}
	return md5Hex(orig, 24)
}

// limitName cuts s to n characters, ending it in "-" and a short hash of the whole.
func limitName(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const hexLen = 5
	sep := "-"
	if n <= hexLen+len(sep) {
		return s[:n]
	}
	keep := n - hexLen - len(sep)
	if s[keep-1] == '-' {
		sep = ""
	}
	return s[:keep] + sep + md5Hex(s, hexLen)
}

func md5Hex(s string, n int) string {
	sum := md5.Sum([]byte(s)) //nolint:gosec // names, not security
	return hex.EncodeToString(sum[:])[:n]
}
