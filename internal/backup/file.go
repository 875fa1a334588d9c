package backup

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/store/sqlstore"
)

// Source is a store that can be snapshotted (both drivers' stores are).
type Source interface {
	Snapshot(ctx context.Context, head func(sqlstore.SnapshotInfo) error, table sqlstore.TableFunc) error
}

// dataFile is one file of the data directory a backup carries, by its slash path inside it.
type dataFile struct {
	path string
	mode os.FileMode
	data []byte
}

// tlsDir and keysDir are the data directory's parts a backup carries: the CA and serving
// certificate (agents pin the CA) and the key-encryption key. git/ is a cache.
const (
	tlsDir  = "tls"
	keysDir = "keys"
)

// allowedPath: a restore writes only where a backup writes, whatever the file says.
func allowedPath(p string) bool {
	if !filepath.IsLocal(p) || strings.Contains(p, `\`) {
		return false
	}
	dir, name, ok := strings.Cut(p, "/")
	if !ok || name == "" || strings.Contains(name, "/") {
		return false
	}
	return dir == tlsDir || (dir == keysDir && name == auth.KEKFileName)
}

// readDataFiles reads the files of dataDir a backup carries: tls/*, and keys/kek when
// withKEK.
func readDataFiles(dataDir string, withKEK bool) ([]dataFile, bool, error) {
	var out []dataFile
	entries, err := os.ReadDir(filepath.Join(dataDir, tlsDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("reading the TLS directory: %w", err)
	}
	paths := []string{}
	for _, e := range entries {
		if e.Type().IsRegular() {
			paths = append(paths, tlsDir+"/"+e.Name())
		}
	}
	if withKEK {
		paths = append(paths, keysDir+"/"+auth.KEKFileName)
	}
	kek := false
	for _, p := range paths {
		full := filepath.Join(dataDir, filepath.FromSlash(p))
		st, err := os.Stat(full)
		if errors.Is(err, os.ErrNotExist) && strings.HasPrefix(p, keysDir+"/") {
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("reading %s: %w", p, err)
		}
		if st.Size() > maxFile {
			return nil, false, fmt.Errorf("%s is larger than %d bytes", p, maxFile)
		}
		data, err := os.ReadFile(full)
		if err != nil {
			return nil, false, fmt.Errorf("reading %s: %w", p, err)
		}
		out = append(out, dataFile{path: p, mode: st.Mode().Perm(), data: data})
		kek = kek || strings.HasPrefix(p, keysDir+"/")
	}
	return out, kek, nil
}

// Write writes a backup of src and of dataDir's TLS files (and its keys/kek when withKEK:
// the server's KEK lives there) to w, and returns its header. The store's tables come from
// one consistent snapshot, taken while it is written to.
func Write(ctx context.Context, w io.Writer, src Source, dataDir string, withKEK bool) (Header, error) {
	files, kek, err := readDataFiles(dataDir, withKEK)
	if err != nil {
		return Header{}, err
	}
	var e *encoder
	var h Header
	err = src.Snapshot(ctx, func(info sqlstore.SnapshotInfo) error {
		h = Header{Created: time.Now().UTC(), Driver: info.Driver, Revision: info.Revision, Schema: info.Schema, KEKIncluded: kek}
		var err error
		e, err = newEncoder(w, h)
		return err
	}, func(name string, cols []string, next sqlstore.RowFunc) error {
		e.table(name, cols)
		for {
			row, err := next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := e.row(row); err != nil {
				return err
			}
		}
	})
	if err != nil {
		return h, fmt.Errorf("writing the backup: %w", err)
	}
	for _, f := range files {
		e.file(f.path, f.mode, f.data)
	}
	if err := e.finish(); err != nil {
		return h, fmt.Errorf("writing the backup: %w", err)
	}
	h.Format = FormatVersion
	return h, nil
}

// File is a backup file that has been checked whole: its checksum matches and every record
// in it is well formed.
type File struct {
	f      *os.File
	body   int64 // bytes of the gzip body
	Header Header
	Tables int
	Rows   int64
	Files  []string
}

const trailerSize = sha256.Size

// Open opens and checks a backup file. Every refusal wraps ErrFormat and says why.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	bf, err := check(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return bf, nil
}

func check(f *os.File) (*File, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	magic := make([]byte, len(Magic))
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != Magic {
		return nil, formatErr("it does not start with %q", strings.TrimSpace(Magic))
	}
	body := st.Size() - int64(len(Magic)) - trailerSize
	if body <= 0 {
		return nil, formatErr("the file ends early (truncated)")
	}
	sum := sha256.New()
	sum.Write(magic)
	if _, err := io.CopyN(sum, f, body); err != nil {
		return nil, fmt.Errorf("reading: %w", err)
	}
	want := make([]byte, trailerSize)
	if _, err := io.ReadFull(f, want); err != nil {
		return nil, fmt.Errorf("reading: %w", err)
	}
	if !bytes.Equal(sum.Sum(nil), want) {
		return nil, formatErr("its checksum does not match (damaged or truncated)")
	}
	bf := &File{f: f, body: body}
	tables := 0
	err = bf.walk(func(string, []string, sqlstore.RowFunc) error { tables++; return nil }, func(p string, _ os.FileMode, _ []byte) error {
		bf.Files = append(bf.Files, p)
		return nil
	})
	if err != nil {
		return nil, err
	}
	bf.Tables = tables
	return bf, nil
}

// Close closes the file.
func (bf *File) Close() error { return bf.f.Close() }

// walk reads the body from the start: table is called for each table (rows it does not
// read are skipped), file for each file.
func (bf *File) walk(table sqlstore.TableFunc, file func(path string, mode os.FileMode, data []byte) error) error {
	if _, err := bf.f.Seek(int64(len(Magic)), io.SeekStart); err != nil {
		return err
	}
	zr, err := gzip.NewReader(bufio.NewReaderSize(io.LimitReader(bf.f, bf.body), 256<<10))
	if err != nil {
		return formatErr("the compressed body: %v", err)
	}
	zr.Multistream(false)
	d := &decoder{r: bufio.NewReaderSize(zr, 256<<10)}
	h, err := d.header()
	if err != nil {
		return err
	}
	bf.Header = h
	var rows int64
	for {
		rec, err := d.r.ReadByte()
		if err != nil {
			return d.eof(err)
		}
		switch rec {
		case recTable:
			name, cols, err := d.tableHead()
			if err != nil {
				return err
			}
			next := func() ([]any, error) {
				b, err := d.r.Peek(1)
				if err != nil {
					return nil, d.eof(err)
				}
				if b[0] != recRow {
					return nil, io.EOF
				}
				d.r.ReadByte()
				vals := make([]any, len(cols))
				for i := range vals {
					if vals[i], err = d.value(); err != nil {
						return nil, err
					}
				}
				rows++
				return vals, nil
			}
			if err := table(name, cols, next); err != nil {
				return err
			}
			for {
				if _, err := next(); err != nil {
					if errors.Is(err, io.EOF) {
						break
					}
					return err
				}
			}
		case recFile:
			p, err := d.bytes(maxName, "a file name")
			if err != nil {
				return err
			}
			mode, err := d.uvarint()
			if err != nil {
				return err
			}
			data, err := d.bytes(maxFile, "a file")
			if err != nil {
				return err
			}
			if !allowedPath(string(p)) {
				return formatErr("a file %q outside the data directory's tls/ and keys/kek", p)
			}
			if file != nil {
				if err := file(string(p), os.FileMode(mode).Perm(), data); err != nil {
					return err
				}
			}
		case recEnd:
			n, err := d.uvarint()
			if err != nil {
				return err
			}
			if n != uint64(rows) {
				return formatErr("it holds %d rows but says %d", rows, n)
			}
			if _, err := d.r.ReadByte(); !errors.Is(err, io.EOF) {
				if err != nil {
					return d.eof(err)
				}
				return formatErr("data after the end")
			}
			bf.Rows = rows
			return nil
		default:
			return formatErr("unknown record type %d", rec)
		}
	}
}

func (d *decoder) tableHead() (string, []string, error) {
	name, err := d.bytes(maxName, "a table name")
	if err != nil {
		return "", nil, err
	}
	n, err := d.uvarint()
	if err != nil {
		return "", nil, err
	}
	if n == 0 || n > maxColumns {
		return "", nil, formatErr("table %q has %d columns", name, n)
	}
	cols := make([]string, n)
	for i := range cols {
		c, err := d.bytes(maxName, "a column name")
		if err != nil {
			return "", nil, err
		}
		cols[i] = string(c)
	}
	return string(name), cols, nil
}
