package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"flotilla.dev/api"
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
	dirs := 0
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
			// Directories hold no bytes, but each costs a header's work: a small archive
			// of millions of them would keep a reader busy.
			if dirs++; l.MaxFiles > 0 && dirs > l.MaxFiles {
				return nil, fmt.Errorf("unpacking bundle: %w: more than %d directories", ErrTooLarge, l.MaxFiles)
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

// ResourceError is an inline resource of a Bundle that cannot be decoded. Field is the
// resource's field at fault ("name", "content" or "encoding").
type ResourceError struct {
	Index int
	Field string
	Err   error
}

func (e *ResourceError) Error() string {
	return fmt.Sprintf("spec.resources[%d].%s: %v", e.Index, e.Field, e.Err)
}

func (e *ResourceError) Unwrap() error { return e.Err }

// DecodeResources decodes a Bundle's inline resources (Fleet's format: plain, base64 or
// base64+gz) into Files. Limits apply while decompressing, never after: a resource is read
// through a reader that stops one byte past what is left of the file and total budgets, so a
// small request of highly compressible resources costs at most l.MaxBytes of memory, however
// much it would expand to. An error over a limit wraps ErrTooLarge and names the limit.
func DecodeResources(rs []api.BundleResource, l Limits) (Files, error) {
	if l.MaxFiles > 0 && len(rs) > l.MaxFiles {
		return nil, fmt.Errorf("spec.resources: %w: %d resources, more than %d files", ErrTooLarge, len(rs), l.MaxFiles)
	}
	files := make(Files, len(rs))
	var total int64
	for i, r := range rs {
		if err := ValidPath(r.Name); err != nil {
			return nil, &ResourceError{Index: i, Field: "name", Err: err}
		}
		if _, dup := files[r.Name]; dup {
			return nil, &ResourceError{Index: i, Field: "name", Err: fmt.Errorf("%q appears twice", r.Name)}
		}
		switch r.Encoding {
		case "", "base64", "base64+gz":
		default:
			return nil, &ResourceError{Index: i, Field: "encoding", Err: fmt.Errorf("unsupported value %q (use base64 or base64+gz, or none)", r.Encoding)}
		}
		budget := int64(-1) // no limit
		if l.MaxFileBytes > 0 {
			budget = l.MaxFileBytes
		}
		if l.MaxBytes > 0 && (budget < 0 || l.MaxBytes-total < budget) {
			budget = l.MaxBytes - total
		}
		data, err := decodeResource(r, budget)
		if err != nil {
			return nil, &ResourceError{Index: i, Field: "content", Err: err}
		}
		total += int64(len(data))
		if err := l.check(r.Name, int64(len(data)), i+1, total); err != nil {
			return nil, fmt.Errorf("spec.resources[%d]: %w (uncompressed)", i, err)
		}
		files[r.Name] = data
	}
	return files, nil
}

// decodeResource decodes one resource, reading at most budget+1 bytes of decompressed
// content (budget < 0: no bound), which is enough for the caller to see it is over.
func decodeResource(r api.BundleResource, budget int64) ([]byte, error) {
	switch r.Encoding {
	case "":
		return []byte(r.Content), nil
	case "base64":
		return base64.StdEncoding.DecodeString(r.Content)
	case "base64+gz":
		raw, err := base64.StdEncoding.DecodeString(r.Content)
		if err != nil {
			return nil, err
		}
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("not gzip: %w", err)
		}
		var src io.Reader = zr
		if budget >= 0 {
			src = io.LimitReader(zr, budget+1)
		}
		b, err := io.ReadAll(src)
		if err != nil {
			return nil, fmt.Errorf("decompressing: %w", err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("unsupported encoding %q (use base64 or base64+gz, or none)", r.Encoding)
}
