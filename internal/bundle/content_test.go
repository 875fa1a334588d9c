package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"flotilla.dev/api"
)

func TestPackDeterministic(t *testing.T) {
	f := Files{"b.yaml": []byte("b"), "a/x.yaml": []byte("x"), "c": nil}
	data1, d1, err := Pack(f)
	if err != nil {
		t.Fatal(err)
	}
	g := Files{"c": nil, "a/x.yaml": []byte("x"), "b.yaml": []byte("b")}
	data2, d2, err := Pack(g)
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 || !bytes.Equal(data1, data2) {
		t.Errorf("Pack is not deterministic: %s != %s", d1, d2)
	}
	if !strings.HasPrefix(d1, "sha256:") || len(d1) != len("sha256:")+64 || d1 != Digest(data1) {
		t.Errorf("digest = %q, want sha256:<hex of the data>", d1)
	}
	got, err := Unpack(data1, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	want := Files{"b.yaml": []byte("b"), "a/x.yaml": []byte("x"), "c": {}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Unpack(Pack(f)) = %q, want %q", got, want)
	}
	if _, d3, _ := Pack(Files{"b.yaml": []byte("B")}); d3 == d1 {
		t.Error("different content, same digest")
	}
}

func TestPackRejectsBadPaths(t *testing.T) {
	for _, name := range []string{"/abs", "../up", "a/../../b", "a//b", "./a", ""} {
		if _, _, err := Pack(Files{name: []byte("x")}); err == nil {
			t.Errorf("Pack accepted path %q", name)
		}
	}
}

type entry struct {
	name     string
	typeflag byte
	data     string
	link     string
}

func tarball(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typeflag, Mode: 0o644, Size: int64(len(e.data)), Linkname: e.link}
		if e.typeflag != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write([]byte(e.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestUnpackRejects(t *testing.T) {
	small := Limits{MaxFiles: 2, MaxFileBytes: 10, MaxBytes: 15}
	tests := []struct {
		name    string
		data    []byte
		limits  Limits
		wantErr string
	}{
		{"absolute path", tarball(t, entry{name: "/etc/passwd", typeflag: tar.TypeReg, data: "x"}), small, "absolute path"},
		{"dot-dot", tarball(t, entry{name: "a/../../b", typeflag: tar.TypeReg, data: "x"}), small, "leaves the bundle"},
		{"symlink", tarball(t, entry{name: "l", typeflag: tar.TypeSymlink, link: "/etc/passwd"}), small, "links are not allowed"},
		{"hard link", tarball(t, entry{name: "l", typeflag: tar.TypeLink, link: "x"}), small, "links are not allowed"},
		{"device", tarball(t, entry{name: "d", typeflag: tar.TypeChar}), small, "not a regular file"},
		{"duplicate", tarball(t, entry{name: "a", typeflag: tar.TypeReg, data: "1"}, entry{name: "a", typeflag: tar.TypeReg, data: "2"}), small, "duplicate"},
		{"file too big", tarball(t, entry{name: "a", typeflag: tar.TypeReg, data: "01234567890"}), small, "over 10 bytes"},
		{"too many files", tarball(t, entry{name: "a", typeflag: tar.TypeReg}, entry{name: "b", typeflag: tar.TypeReg}, entry{name: "c", typeflag: tar.TypeReg}), small, "more than 2 files"},
		{"too many bytes", tarball(t, entry{name: "a", typeflag: tar.TypeReg, data: "0123456789"}, entry{name: "b", typeflag: tar.TypeReg, data: "0123456789"}), small, "more than 15 bytes"},
		{"not gzip", []byte("plain"), small, "not a gzipped tar"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Unpack(tt.data, tt.limits)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Unpack() error = %v, want one containing %q", err, tt.wantErr)
			}
			if strings.Contains(tt.wantErr, "bytes") || strings.Contains(tt.wantErr, "files") {
				if !errors.Is(err, ErrTooLarge) {
					t.Errorf("error %v does not wrap ErrTooLarge", err)
				}
			}
		})
	}
}

func TestUnpackAcceptsDirectories(t *testing.T) {
	data := tarball(t, entry{name: "dir/", typeflag: tar.TypeDir}, entry{name: "./dir/a", typeflag: tar.TypeReg, data: "a"})
	got, err := Unpack(data, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Files{"dir/a": []byte("a")}); !reflect.DeepEqual(got, want) {
		t.Errorf("Unpack() = %q, want %q", got, want)
	}
}

// gzipZerosResource returns a base64+gz resource of n zero bytes: about a thousandth of n on the wire.
func gzipZerosResource(t testing.TB, name string, n int) api.BundleResource {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zero := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, len(zero))
		zw.Write(zero[:k])
		n -= k
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return api.BundleResource{Name: name, Encoding: "base64+gz", Content: base64.StdEncoding.EncodeToString(buf.Bytes())}
}

// allocatedBy returns the bytes allocated while fn ran.
func allocatedBy(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// Compressed resources are limited while they are decompressed: ten resources of 64 MiB of
// zeros (an 870 KB request) once cost 1 GB of memory before the limit was checked.
func TestDecodeResourcesBoundsMemory(t *testing.T) {
	var rs []api.BundleResource
	zeros := gzipZerosResource(t, "", 64<<20)
	for i := range 10 {
		zeros.Name = fmt.Sprintf("zeros-%d.yaml", i)
		rs = append(rs, zeros)
	}
	lim := DefaultLimits()
	var err error
	alloc := allocatedBy(func() { _, err = DecodeResources(rs, lim) })
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), fmt.Sprintf("file is over %d bytes", lim.MaxFileBytes)) {
		t.Fatalf("err = %v, want %v naming the file limit", err, ErrTooLarge)
	}
	// One file's budget plus the growth of its buffer; the old decoder read all ten.
	if ratio := float64(alloc) / float64(lim.MaxBytes); ratio > 1 {
		t.Errorf("decoding allocated %d bytes, %.2f times the %d-byte limit; want at most 1", alloc, ratio, lim.MaxBytes)
	}
	t.Logf("allocated %d bytes (%.2f of MaxBytes, %.2f of MaxFileBytes)", alloc, float64(alloc)/float64(lim.MaxBytes), float64(alloc)/float64(lim.MaxFileBytes))

	// The total: files each within the file limit stop at the one that crosses the total.
	small := Limits{MaxFiles: 100, MaxFileBytes: 1 << 20, MaxBytes: 4 << 20}
	rs = rs[:0]
	for i := range 10 {
		rs = append(rs, gzipZerosResource(t, fmt.Sprintf("z%d", i), 1<<20))
	}
	alloc = allocatedBy(func() { _, err = DecodeResources(rs, small) })
	want := fmt.Sprintf("spec.resources[4]: z4: bundle content too large: more than %d bytes in all (uncompressed)", small.MaxBytes)
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
	if ratio := float64(alloc) / float64(small.MaxBytes); ratio > 3 {
		t.Errorf("decoding allocated %d bytes, %.2f times the %d-byte limit; want at most 3", alloc, ratio, small.MaxBytes)
	}
}

func TestDecodeResources(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString([]byte("b"))
	gz := gzipZerosResource(t, "c", 3)
	got, err := DecodeResources([]api.BundleResource{{Name: "a", Content: "a"}, {Name: "d/b", Content: b64, Encoding: "base64"}, gz}, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if want := (Files{"a": []byte("a"), "d/b": []byte("b"), "c": {0, 0, 0}}); !reflect.DeepEqual(got, want) {
		t.Errorf("DecodeResources = %q, want %q", got, want)
	}
	for _, tt := range []struct {
		rs   []api.BundleResource
		want string
	}{
		{[]api.BundleResource{{Name: "../x"}}, "spec.resources[0].name: ../x: path leaves the bundle"},
		{[]api.BundleResource{{Name: "/etc/passwd"}}, "spec.resources[0].name: /etc/passwd: absolute path"},
		{[]api.BundleResource{{Name: "a\x00b"}}, `spec.resources[0].name: "a\x00b": NUL in path`},
		{[]api.BundleResource{{Name: "a"}, {Name: "a"}}, `spec.resources[1].name: "a" appears twice`},
		{[]api.BundleResource{{Name: "a", Encoding: "zstd"}}, `spec.resources[0].encoding: unsupported value "zstd" (use base64 or base64+gz, or none)`},
		{[]api.BundleResource{{Name: "a", Encoding: "base64", Content: "!"}}, "spec.resources[0].content: illegal base64 data at input byte 0"},
		{[]api.BundleResource{{Name: "a", Encoding: "base64+gz", Content: b64}}, "spec.resources[0].content: not gzip: unexpected EOF"},
		{make([]api.BundleResource, 3), "spec.resources: bundle content too large: 3 resources, more than 2 files"},
	} {
		_, err := DecodeResources(tt.rs, Limits{MaxFiles: 2, MaxFileBytes: 10, MaxBytes: 20})
		if err == nil || err.Error() != tt.want {
			t.Errorf("DecodeResources(%q) = %v, want %q", tt.rs, err, tt.want)
		}
	}
}

func TestUnpackCountsDirectories(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for i := range 5 {
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d%d/", i), Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	zw.Close()
	_, err := Unpack(buf.Bytes(), Limits{MaxFiles: 4})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "more than 4 directories") {
		t.Errorf("Unpack of 5 directories with MaxFiles 4: %v, want %v naming the limit", err, ErrTooLarge)
	}
	if _, err := Unpack(buf.Bytes(), Limits{MaxFiles: 5}); err != nil {
		t.Errorf("Unpack of 5 directories with MaxFiles 5: %v", err)
	}
}
