package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
)

// Files is a bundle's content: slash-separated paths relative to the bundle's root, mapped to the
// bytes of each file.
type Files map[string][]byte

// Names returns the paths in f, sorted.
func (f Files) Names() []string {
	names := make([]string, 0, len(f))
	for n := range f {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Size returns the total number of bytes in f.
func (f Files) Size() int64 {
	var n int64
	for _, b := range f {
		n += int64(len(b))
	}
	return n
}

// Limits bound the content of one bundle. A zero field means no limit.
type Limits struct {
	MaxFiles     int   // number of files
	MaxFileBytes int64 // size of one file
	MaxBytes     int64 // total size of all files, uncompressed
}

// DefaultLimits keep a bundle well within what an edge agent should hold in memory. Fleet's
// limit is 1 MB of gzipped resources; these leave room for charts with vendored dependencies.
func DefaultLimits() Limits {
	return Limits{MaxFiles: 10_000, MaxFileBytes: 16 << 20, MaxBytes: 64 << 20}
}

// ErrTooLarge is wrapped by every error reporting content over its Limits.
var ErrTooLarge = errors.New("bundle content too large")

// check reports whether content of files files and size bytes, the last of which was name of
// fileSize bytes, is within l.
func (l Limits) check(name string, fileSize int64, files int, size int64) error {
	if l.MaxFileBytes > 0 && fileSize > l.MaxFileBytes {
		return fmt.Errorf("%s: %w: file is over %d bytes", name, ErrTooLarge, l.MaxFileBytes)
	}
	if l.MaxFiles > 0 && files > l.MaxFiles {
		return fmt.Errorf("%s: %w: more than %d files", name, ErrTooLarge, l.MaxFiles)
	}
	if l.MaxBytes > 0 && size > l.MaxBytes {
		return fmt.Errorf("%s: %w: more than %d bytes in all", name, ErrTooLarge, l.MaxBytes)
	}
	return nil
}

// Check reports whether f is within l.
func (l Limits) Check(f Files) error {
	var size int64
	for i, name := range f.Names() {
		n := int64(len(f[name]))
		size += n
		if err := l.check(name, n, i+1, size); err != nil {
			return err
		}
	}
	return nil
}

// ValidPath reports whether name may be a path in Files: relative, slash-separated, clean, and
// never leaving the bundle's root.
func ValidPath(name string) error {
	switch {
	case name == "" || name == ".":
		return errors.New("empty path")
	case strings.HasPrefix(name, "/"):
		return fmt.Errorf("%s: absolute path", name)
	case strings.Contains(name, "\\"):
		return fmt.Errorf("%s: backslash in path", name)
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("%q: NUL in path", name)
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return fmt.Errorf("%s: path leaves the bundle", name)
		}
	}
	if path.Clean(name) != name {
		return fmt.Errorf("%s: path is not clean", name)
	}
	return nil
}

// Pack archives f deterministically, as a gzipped tar with sorted names and no times, owners or
// modes that could vary, and returns the archive and its digest, "sha256:<hex>". The same Files
// always give the same digest, so content can be stored and cached by it.
func Pack(f Files) (data []byte, digest string, err error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, "", err
	}
	tw := tar.NewWriter(zw)
	for _, name := range f.Names() {
		if err := ValidPath(name); err != nil {
			return nil, "", fmt.Errorf("packing bundle: %w", err)
		}
		b := f[name]
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     name,
			Mode:     0o644,
			Size:     int64(len(b)),
			Format:   tar.FormatPAX,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, "", fmt.Errorf("packing %s: %w", name, err)
		}
		if _, err := tw.Write(b); err != nil {
			return nil, "", fmt.Errorf("packing %s: %w", name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", fmt.Errorf("packing bundle: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, "", fmt.Errorf("packing bundle: %w", err)
	}
	data = buf.Bytes()
	return data, Digest(data), nil
}

// Digest returns "sha256:<hex>" of data.
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Unpack reads an archive made by Pack (or any gzipped tar of regular files), refusing absolute
// or escaping paths, links, devices, duplicates and content over l.
func Unpack(data []byte, l Limits) (Files, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("unpacking bundle: not a gzipped tar: %w", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	files := Files{}
	var size int64
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("unpacking bundle: %w", err)
		}
		name := strings.TrimPrefix(hdr.Name, "./")
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := ValidPath(strings.TrimSuffix(name, "/")); err != nil {
				return nil, fmt.Errorf("unpacking bundle: %w", err)
			}
			continue
		case tar.TypeReg:
		case tar.TypeSymlink, tar.TypeLink:
			return nil, fmt.Errorf("unpacking bundle: %s: links are not allowed", hdr.Name)
		default:
			return nil, fmt.Errorf("unpacking bundle: %s: not a regular file", hdr.Name)
		}
		if err := ValidPath(name); err != nil {
			return nil, fmt.Errorf("unpacking bundle: %w", err)
		}
		if _, dup := files[name]; dup {
			return nil, fmt.Errorf("unpacking bundle: %s: duplicate path", name)
		}
		if err := l.check(name, hdr.Size, len(files)+1, size+hdr.Size); err != nil {
			return nil, fmt.Errorf("unpacking bundle: %w", err)
		}
		// The header's size is checked above, but read no more than it promises either way.
		b, err := io.ReadAll(io.LimitReader(tr, hdr.Size))
		if err != nil {
			return nil, fmt.Errorf("unpacking bundle: %s: %w", name, err)
		}
		size += int64(len(b))
		files[name] = b
	}
	return files, nil
}
