package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"errors"
	"path"
	"strings"
	"testing"

	"flotilla.dev/api"
)

// contentFuzzLimits are small, so that the fuzzer reaches them.
var contentFuzzLimits = Limits{MaxFiles: 8, MaxFileBytes: 1 << 10, MaxBytes: 4 << 10}

func FuzzValidPath(f *testing.F) {
	for _, s := range []string{"a", "a/b.yaml", "", ".", "..", "../x", "a/../b", "/etc/passwd", "a//b", "a/", "./a", "a\\b", "a\x00b", "..a", "a/..b", "a/.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidPath(name) != nil {
			return
		}
		if path.IsAbs(name) || strings.ContainsRune(name, 0) || strings.Contains(name, "\\") || path.Clean(name) != name || name == "." {
			t.Fatalf("ValidPath(%q) accepted a path that is absolute, unclean or holds NUL or backslash", name)
		}
		for _, el := range strings.Split(name, "/") {
			if el == ".." || el == "" {
				t.Fatalf("ValidPath(%q) accepted a path with element %q", name, el)
			}
		}
		// Joined under a root, an accepted path stays under it.
		if j := path.Join("/root", name); !strings.HasPrefix(j, "/root/") {
			t.Fatalf("ValidPath(%q) accepted a path that leaves the root: %s", name, j)
		}
	})
}

func FuzzUnpack(f *testing.F) {
	for _, files := range []Files{
		{"a.yaml": []byte("kind: ConfigMap")},
		{"d/b": []byte("x"), "c": nil},
	} {
		data, _, err := Pack(files)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, tt := range []struct {
		name string
		typ  byte
		body string
	}{
		{"../evil", '0', "x"}, {"/abs", '0', "x"}, {"link", '2', ""}, {"dir/", '5', ""}, {"big", '0', strings.Repeat("z", 2000)},
	} {
		f.Add(tarGzOne(f, tt.name, tt.typ, tt.body))
	}
	f.Add([]byte("not gzip"))
	f.Fuzz(func(t *testing.T, data []byte) {
		files, err := Unpack(data, contentFuzzLimits)
		if err != nil {
			return
		}
		if err := contentFuzzLimits.Check(files); err != nil {
			t.Fatalf("Unpack accepted content over its limits: %v", err)
		}
		for name := range files {
			if err := ValidPath(name); err != nil {
				t.Fatalf("Unpack accepted path %q: %v", name, err)
			}
		}
		// What was accepted packs and unpacks to itself.
		again, _, err := Pack(files)
		if err != nil {
			t.Fatalf("Pack of unpacked files: %v", err)
		}
		back, err := Unpack(again, contentFuzzLimits)
		if err != nil {
			t.Fatalf("Unpack(Pack(files)): %v", err)
		}
		if len(back) != len(files) {
			t.Fatalf("round trip: %d files, want %d", len(back), len(files))
		}
		for name, b := range files {
			if !bytes.Equal(back[name], b) {
				t.Fatalf("round trip changed %s", name)
			}
		}
	})
}

// tarGzOne is a gzipped tar of one entry, which Pack would never write.
func tarGzOne(tb testing.TB, name string, typ byte, body string) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: typ, Size: int64(len(body)), Mode: 0o644, Linkname: "target"}); err != nil {
		tb.Fatal(err)
	}
	tw.Write([]byte(body))
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func FuzzDecodeResources(f *testing.F) {
	gz := gzipZerosResource(f, "z", 5000)
	f.Add("a.yaml", "kind: ConfigMap", "", "b", "", "")
	f.Add("a", base64.StdEncoding.EncodeToString([]byte("hello")), "base64", "a", "x", "")
	f.Add("z", gz.Content, "base64+gz", "y", gz.Content, "base64+gz")
	f.Add("../x", "", "", "/abs", "", "zstd")
	f.Fuzz(func(t *testing.T, n1, c1, e1, n2, c2, e2 string) {
		rs := []api.BundleResource{{Name: n1, Content: c1, Encoding: e1}, {Name: n2, Content: c2, Encoding: e2}}
		files, err := DecodeResources(rs, contentFuzzLimits)
		if err != nil {
			var re *ResourceError
			if !errors.Is(err, ErrTooLarge) && !errors.As(err, &re) {
				t.Fatalf("error %v is neither too large nor about one resource", err)
			}
			return
		}
		if err := contentFuzzLimits.Check(files); err != nil {
			t.Fatalf("DecodeResources accepted content over its limits: %v", err)
		}
		if len(files) != len(rs) {
			t.Fatalf("%d files from %d resources", len(files), len(rs))
		}
		for name := range files {
			if err := ValidPath(name); err != nil {
				t.Fatalf("DecodeResources accepted path %q: %v", name, err)
			}
		}
	})
}

func FuzzBundleName(f *testing.F) {
	f.Add("repo", "apps/web")
	f.Add("my-repo", "Apps/Web")
	f.Add("", "--")
	f.Add("r", strings.Repeat("abcdefghij", 8))
	f.Add("r", "../..//x_y.Z")
	f.Fuzz(func(t *testing.T, prefix, dir string) {
		got := BundleName(prefix, dir)
		if !dnsLabelRE.MatchString(got) || len(got) > maxReleaseNameLen {
			t.Fatalf("BundleName(%q, %q) = %q: not a DNS label of at most %d characters", prefix, dir, got, maxReleaseNameLen)
		}
		if again := BundleName(prefix, dir); again != got {
			t.Fatalf("BundleName(%q, %q) is not deterministic: %q, then %q", prefix, dir, got, again)
		}
	})
}

func FuzzParseObjects(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: s}\n"), false)
	f.Add([]byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}`), false)
	f.Add([]byte("values: 1\n---\n- a\n---\nkind: X\n"), true)
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: 3\n"), false)
	f.Add([]byte("a: &a [*a]\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, skipKindless bool) {
		objs, err := parseObjects(nil, "f.yaml", data, skipKindless)
		if err != nil {
			return
		}
		for _, o := range objs {
			if o.GetAPIVersion() == "" || o.GetKind() == "" {
				t.Fatalf("object without apiVersion or kind: %v", o.Object)
			}
			if o.IsList() {
				t.Fatalf("a List was not expanded: %v", o.Object)
			}
		}
		// What was parsed encodes, and parses back to the same objects.
		enc, err := encodeObjects(objs)
		if err != nil {
			return // values YAML cannot hold (NaN, say) are the encoder's to refuse
		}
		back, err := parseObjects(nil, "again.yaml", enc, false)
		if err != nil {
			t.Fatalf("parsing encoded objects: %v\n%s", err, enc)
		}
		if len(back) != len(objs) {
			t.Fatalf("round trip: %d objects, want %d", len(back), len(objs))
		}
		for i := range objs {
			a, _ := json.Marshal(objs[i].Object)
			b, _ := json.Marshal(back[i].Object)
			if !bytes.Equal(a, b) {
				t.Fatalf("round trip changed object %d:\n%v\n%v", i, objs[i].Object, back[i].Object)
			}
		}
	})
}
