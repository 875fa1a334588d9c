package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"reflect"
	"strings"
	"testing"
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
