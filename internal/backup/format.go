// Package backup owns Flotilla's backup file: its format, taking one from a running store
// (with the data directory's files that hold the server's identity and keys), checking one
// whole before trusting it, and restoring one into a fresh data directory or database; and
// migrating an embedded installation to PostgreSQL through the same path.
//
// A backup file is
//
//	magic "FLOTILLA-BACKUP\n"
//	gzip( header JSON, then records: table, row…, table, row…, file…, end )
//	SHA-256 of every byte before it
//
// Values are typed (null, int64, float64, bool, text, bytes, time), not driver-specific, so a
// SQLite backup restores into PostgreSQL and back.
package backup

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"os"
	"time"
)

// Magic starts every backup file.
const Magic = "FLOTILLA-BACKUP\n"

// FormatVersion is the version of the layout inside the file this code writes and reads.
const FormatVersion = 1

// Header describes a backup.
type Header struct {
	Format   int       `json:"format"`
	Created  time.Time `json:"created"`
	Driver   string    `json:"driver"`
	Revision int64     `json:"revision"`
	// Schema is the newest schema migration of the store it was taken from.
	Schema int `json:"schema"`
	// KEKIncluded: the key-encryption key (keys/kek) is in the file. Without it the restored
	// server needs the same --kek-file or FLOTILLA_KEY_ENCRYPTION_KEY as the original.
	KEKIncluded bool `json:"kekIncluded"`
}

// Record types inside the compressed body.
const (
	recTable byte = 'T'
	recRow   byte = 'R'
	recFile  byte = 'F'
	recEnd   byte = 'E'
)

// Value types.
const (
	valNull byte = iota
	valInt
	valFloat
	valBool
	valText
	valBytes
	valTime
)

// Budgets a hostile file cannot exceed: they bound what one length prefix makes us read.
const (
	maxName    = 1 << 10
	maxColumns = 1 << 10
	maxValue   = 1 << 30
	maxFile    = 64 << 20
	maxHeader  = 1 << 16
)

// ErrFormat is wrapped by every refusal of a file that is not a whole, intact backup.
var ErrFormat = errors.New("not a valid flotilla backup")

func formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, args...))
}

// encoder writes the body (inside gzip) and hashes the whole file.
type encoder struct {
	raw  io.Writer // the file
	out  io.Writer // the file and the hash
	sum  hash.Hash
	zw   *gzip.Writer
	bw   *bufio.Writer
	tmp  [binary.MaxVarintLen64]byte
	rows int64
}

func newEncoder(w io.Writer, h Header) (*encoder, error) {
	e := &encoder{raw: w, sum: sha256.New()}
	e.out = io.MultiWriter(w, e.sum)
	if _, err := io.WriteString(e.out, Magic); err != nil {
		return nil, err
	}
	e.zw, _ = gzip.NewWriterLevel(e.out, gzip.BestSpeed)
	e.bw = bufio.NewWriterSize(e.zw, 256<<10)
	h.Format = FormatVersion
	data, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	e.bytes(data)
	return e, nil
}

func (e *encoder) uvarint(v uint64) {
	n := binary.PutUvarint(e.tmp[:], v)
	e.bw.Write(e.tmp[:n])
}

func (e *encoder) bytes(b []byte) {
	e.uvarint(uint64(len(b)))
	e.bw.Write(b)
}

func (e *encoder) table(name string, cols []string) {
	e.bw.WriteByte(recTable)
	e.bytes([]byte(name))
	e.uvarint(uint64(len(cols)))
	for _, c := range cols {
		e.bytes([]byte(c))
	}
}

func (e *encoder) row(vals []any) error {
	e.bw.WriteByte(recRow)
	for _, v := range vals {
		switch x := v.(type) {
		case nil:
			e.bw.WriteByte(valNull)
		case int64:
			e.bw.WriteByte(valInt)
			n := binary.PutVarint(e.tmp[:], x)
			e.bw.Write(e.tmp[:n])
		case int32:
			e.bw.WriteByte(valInt)
			n := binary.PutVarint(e.tmp[:], int64(x))
			e.bw.Write(e.tmp[:n])
		case int16:
			e.bw.WriteByte(valInt)
			n := binary.PutVarint(e.tmp[:], int64(x))
			e.bw.Write(e.tmp[:n])
		case float64:
			e.bw.WriteByte(valFloat)
			e.uvarint(math.Float64bits(x))
		case bool:
			e.bw.WriteByte(valBool)
			if x {
				e.bw.WriteByte(1)
			} else {
				e.bw.WriteByte(0)
			}
		case string:
			e.bw.WriteByte(valText)
			e.bytes([]byte(x))
		case []byte:
			e.bw.WriteByte(valBytes)
			e.bytes(x)
		case time.Time:
			e.bw.WriteByte(valTime)
			e.bytes([]byte(x.Format(time.RFC3339Nano)))
		default:
			return fmt.Errorf("backup: a value of type %T", v)
		}
	}
	e.rows++
	return nil
}

func (e *encoder) file(path string, mode os.FileMode, data []byte) {
	e.bw.WriteByte(recFile)
	e.bytes([]byte(path))
	e.uvarint(uint64(mode.Perm()))
	e.bytes(data)
}

// finish ends the body and writes the checksum trailer.
func (e *encoder) finish() error {
	e.bw.WriteByte(recEnd)
	e.uvarint(uint64(e.rows))
	if err := e.bw.Flush(); err != nil {
		return err
	}
	if err := e.zw.Close(); err != nil {
		return err
	}
	// The trailer is not part of what it sums.
	_, err := e.raw.Write(e.sum.Sum(nil))
	return err
}

// decoder reads the body.
type decoder struct {
	r   *bufio.Reader
	buf bytes.Buffer
}

func (d *decoder) uvarint() (uint64, error) {
	v, err := binary.ReadUvarint(d.r)
	if err != nil {
		return 0, d.eof(err)
	}
	return v, nil
}

func (d *decoder) eof(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return formatErr("the file ends early (truncated)")
	}
	if errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) {
		return formatErr("the compressed body is damaged: %v", err)
	}
	return formatErr("reading the body: %v", err)
}

// bytes reads a length-prefixed value of at most max bytes. The buffer grows with what
// arrives, so a lying length costs no more memory than the data behind it.
func (d *decoder) bytes(max uint64, what string) ([]byte, error) {
	n, err := d.uvarint()
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, formatErr("%s of %d bytes exceeds the limit of %d", what, n, max)
	}
	d.buf.Reset()
	if _, err := io.CopyN(&d.buf, d.r, int64(n)); err != nil {
		return nil, d.eof(err)
	}
	return bytes.Clone(d.buf.Bytes()), nil
}

func (d *decoder) header() (Header, error) {
	var h Header
	data, err := d.bytes(maxHeader, "the header")
	if err != nil {
		return h, err
	}
	if err := json.Unmarshal(data, &h); err != nil {
		return h, formatErr("the header: %v", err)
	}
	if h.Format != FormatVersion {
		return h, formatErr("format version %d; this flotilla reads version %d", h.Format, FormatVersion)
	}
	return h, nil
}

func (d *decoder) value() (any, error) {
	t, err := d.r.ReadByte()
	if err != nil {
		return nil, d.eof(err)
	}
	switch t {
	case valNull:
		return nil, nil
	case valInt:
		v, err := binary.ReadVarint(d.r)
		if err != nil {
			return nil, d.eof(err)
		}
		return v, nil
	case valFloat:
		v, err := d.uvarint()
		return math.Float64frombits(v), err
	case valBool:
		b, err := d.r.ReadByte()
		if err != nil {
			return nil, d.eof(err)
		}
		return b != 0, nil
	case valText:
		b, err := d.bytes(maxValue, "a value")
		return string(b), err
	case valBytes:
		return d.bytes(maxValue, "a value")
	case valTime:
		b, err := d.bytes(maxName, "a time")
		if err != nil {
			return nil, err
		}
		v, err := time.Parse(time.RFC3339Nano, string(b))
		if err != nil {
			return nil, formatErr("a time value: %v", err)
		}
		return v, nil
	}
	return nil, formatErr("unknown value type %d", t)
}
