package gitops

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// limitedStorage is a clone's object storage whose fetches are checked before go-git reads
// them: go-git indexes a pack as it arrives and inflates each object whole into memory, so a
// 600 MB blob compressed into a few hundred kilobytes would cost 600 MB of heap before any
// size check after the fetch could refuse it.
type limitedStorage struct {
	*filesystem.Storage
	dir string // the clone, whose objects/pack holds a pack while it is checked
	// maxBytes bounds one fetch's pack as received and every object in it once inflated;
	// zero is no limit.
	maxBytes int64
}

var _ storer.PackfileWriter = (*limitedStorage)(nil)

// PackfileWriter receives a fetched pack. The pack is written to a file of its own and
// checked object by object, from headers and streaming inflation, as it arrives; only a pack
// that passes is handed to go-git's storage.
func (s *limitedStorage) PackfileWriter() (io.WriteCloser, error) {
	f, err := os.CreateTemp(filepath.Join(s.dir, "objects", "pack"), fetchTempPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("receiving pack: %w", err)
	}
	pr, pw := io.Pipe()
	w := &packChecker{s: s, f: f, pw: pw, done: make(chan error, 1)}
	go func() {
		err := checkPack(bufio.NewReaderSize(pr, 32<<10), s.maxBytes)
		// Drain what follows the pack's checksum, and refuse the writes after an error.
		if err == nil {
			_, err = io.Copy(io.Discard, pr)
		}
		pr.CloseWithError(err)
		w.done <- err
	}()
	return w, nil
}

// fetchTempPrefix names packs being received; any left by a crash are removed at start.
const fetchTempPrefix = "tmp_flotilla_fetch_"

// packChecker writes a pack to a temporary file while checkPack reads it.
type packChecker struct {
	s     *limitedStorage
	f     *os.File
	pw    *io.PipeWriter
	n     int64
	done  chan error
	wrErr error
}

func (w *packChecker) Write(p []byte) (int, error) {
	if w.wrErr != nil {
		return 0, w.wrErr
	}
	w.n += int64(len(p))
	if w.s.maxBytes > 0 && w.n > w.s.maxBytes {
		w.wrErr = fmt.Errorf("%w: the fetched pack is over %d bytes", ErrTooLarge, w.s.maxBytes)
		return 0, w.wrErr
	}
	// The checker sees the bytes first: an object's header is refused before its data is
	// inflated or stored.
	if _, err := w.pw.Write(p); err != nil {
		w.wrErr = err
		return 0, err
	}
	if _, err := w.f.Write(p); err != nil {
		w.wrErr = err
		return 0, err
	}
	return len(p), nil
}

// Close hands a pack that passed to go-git's storage, and removes the temporary file.
func (w *packChecker) Close() (err error) {
	defer func() {
		w.f.Close()
		os.Remove(w.f.Name())
	}()
	w.pw.Close()
	checkErr := <-w.done
	switch {
	case w.wrErr != nil:
		return w.wrErr
	case w.n == 0:
		return nil
	case checkErr != nil:
		return checkErr
	}
	if _, err := w.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	pw, err := w.s.Storage.PackfileWriter()
	if err != nil {
		return err
	}
	if _, err := io.Copy(pw, w.f); err != nil {
		pw.Close()
		return err
	}
	return pw.Close()
}

// Object types in a pack.
const (
	packCommit   = 1
	packTree     = 2
	packBlob     = 3
	packTag      = 4
	packOfsDelta = 6
	packRefDelta = 7
)

// checkPack reads a pack and refuses it when an object, once inflated (or once its delta is
// applied), is over maxBytes: the sizes are read from the object headers and the first bytes
// of a delta, before anything is inflated. The rest is inflated as a stream to find where the
// next object starts, never held in memory. Zero maxBytes checks only the format.
func checkPack(r *bufio.Reader, maxBytes int64) error {
	var hdr [12]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return fmt.Errorf("reading pack header: %w", err)
	}
	if !bytes.Equal(hdr[:4], []byte("PACK")) {
		return errors.New("malformed pack: no PACK signature")
	}
	if v := binary.BigEndian.Uint32(hdr[4:8]); v != 2 && v != 3 {
		return fmt.Errorf("malformed pack: version %d", v)
	}
	count := binary.BigEndian.Uint32(hdr[8:])
	var zr io.ReadCloser
	tooLarge := func(i uint32, size uint64, what string) error {
		return fmt.Errorf("%w: object %d of the fetched pack is %d bytes%s, over the limit of %d bytes", ErrTooLarge, i+1, size, what, maxBytes)
	}
	for i := range count {
		c, err := r.ReadByte()
		if err != nil {
			return fmt.Errorf("reading object %d of the pack: %w", i+1, err)
		}
		typ := (c >> 4) & 7
		size := uint64(c & 15)
		for shift := 4; c&0x80 != 0; shift += 7 {
			if shift > 60 {
				return errors.New("malformed pack: object size overflows")
			}
			if c, err = r.ReadByte(); err != nil {
				return fmt.Errorf("reading object %d of the pack: %w", i+1, err)
			}
			size |= uint64(c&0x7f) << shift
		}
		switch typ {
		case packCommit, packTree, packBlob, packTag:
			if maxBytes > 0 && size > uint64(maxBytes) {
				return tooLarge(i, size, "")
			}
		case packOfsDelta:
			for {
				if c, err = r.ReadByte(); err != nil {
					return fmt.Errorf("reading object %d of the pack: %w", i+1, err)
				}
				if c&0x80 == 0 {
					break
				}
			}
		case packRefDelta:
			if _, err := r.Discard(20); err != nil {
				return fmt.Errorf("reading object %d of the pack: %w", i+1, err)
			}
		default:
			return fmt.Errorf("malformed pack: object %d has type %d", i+1, typ)
		}
		if zr == nil {
			if zr, err = zlib.NewReader(r); err != nil {
				return fmt.Errorf("inflating object %d of the pack: %w", i+1, err)
			}
		} else if err := zr.(zlib.Resetter).Reset(r, nil); err != nil {
			return fmt.Errorf("inflating object %d of the pack: %w", i+1, err)
		}
		data := &countingReader{r: io.LimitReader(zr, int64(min(size, 1<<62))+1)}
		if typ == packOfsDelta || typ == packRefDelta {
			// A delta starts with the sizes of its base and of its result.
			br := bufio.NewReaderSize(data, 16)
			if _, err := binary.ReadUvarint(br); err != nil {
				return fmt.Errorf("reading delta %d of the pack: %w", i+1, err)
			}
			target, err := binary.ReadUvarint(br)
			if err != nil {
				return fmt.Errorf("reading delta %d of the pack: %w", i+1, err)
			}
			if maxBytes > 0 && target > uint64(maxBytes) {
				return tooLarge(i, target, " once its delta is applied")
			}
			if _, err := io.Copy(io.Discard, br); err != nil {
				return fmt.Errorf("inflating object %d of the pack: %w", i+1, err)
			}
		} else if _, err := io.Copy(io.Discard, data); err != nil {
			return fmt.Errorf("inflating object %d of the pack: %w", i+1, err)
		}
		if uint64(data.n) != size {
			return fmt.Errorf("malformed pack: object %d inflates to %d bytes, not the %d its header says", i+1, data.n, size)
		}
	}
	if _, err := r.Discard(20); err != nil {
		return fmt.Errorf("reading the pack's checksum: %w", err)
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
