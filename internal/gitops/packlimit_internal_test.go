package gitops

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"

	"flotilla.dev/api"
	"flotilla.dev/internal/testenv/gitserver"
)

// A blob of zeros compresses a thousandfold: fetching one over the limit must be refused from
// its header, with heap growth a small fraction of the blob, and leave the clone as it was.
func TestFetchRefusesOversizeObjectBeforeInflating(t *testing.T) {
	gs := gitserver.Start(t)
	repo := gs.NewRepo(t, "bomb")
	const blobSize = 64 << 20
	const limit = 8 << 20
	repo.Write("cm.yaml", "kind: ConfigMap\n")
	small := repo.Commit("small")
	repo.Write("zeros.bin", strings.Repeat("\x00", blobSize))
	repo.CommitTo("bomb", "bomb")

	dir := filepath.Join(t.TempDir(), "clone")
	m, err := openMirror(dir, repo.HTTPURL())
	if err != nil {
		t.Fatal(err)
	}
	auth := &githttp.BasicAuth{Username: gs.User, Password: gs.Password}
	spec := &api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "bomb"}

	var peak atomic.Uint64
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		// Sampled, so only reported; TotalAlloc below is exact.
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			default:
				runtime.Gosched()
			}
		}
	})
	_, err = m.fetch(context.Background(), spec, fetchOptions{auth: auth, maxBytes: limit})
	close(stop)
	wg.Wait()
	runtime.ReadMemStats(&after)

	if err == nil || !strings.Contains(err.Error(), "repository too large") || !strings.Contains(err.Error(), "over the limit of 8388608 bytes") {
		t.Errorf("fetch error %v, want the object refused as over the limit", err)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	ratio := float64(allocated) / blobSize
	t.Logf("blob %d MiB: allocated %.1f MiB during the fetch (%.3f of the blob); heap in use %.1f MiB before, peak sampled %.1f MiB",
		blobSize>>20, float64(allocated)/(1<<20), ratio, float64(before.HeapInuse)/(1<<20), float64(peak.Load())/(1<<20))
	if ratio > 0.1 {
		t.Errorf("the fetch allocated %.2f times the blob's size, want well under 0.1", ratio)
	}
	// Nothing of the refused pack stays in the clone.
	packs, _ := os.ReadDir(filepath.Join(dir, "objects", "pack"))
	for _, p := range packs {
		t.Errorf("%s left in the clone", p.Name())
	}

	// The same clone fetches a commit within the limit.
	spec.Branch = "main"
	got, err := m.fetch(context.Background(), spec, fetchOptions{auth: auth, maxBytes: limit})
	if err != nil || got.String() != small {
		t.Fatalf("fetching the small commit: %v, %v", got, err)
	}
}

// packOf builds a pack of one object with the given type, size in its header and inflated
// body, then the checksum's 20 bytes.
func packOf(typ byte, size uint64, prefix, body []byte) []byte {
	var b bytes.Buffer
	b.WriteString("PACK")
	binary.Write(&b, binary.BigEndian, uint32(2))
	binary.Write(&b, binary.BigEndian, uint32(1))
	c := typ<<4 | byte(size&15)
	size >>= 4
	for size != 0 {
		b.WriteByte(c | 0x80)
		c = byte(size & 0x7f)
		size >>= 7
	}
	b.WriteByte(c)
	b.Write(prefix)
	zw := zlib.NewWriter(&b)
	zw.Write(body)
	zw.Close()
	b.Write(make([]byte, 20))
	return b.Bytes()
}

func TestCheckPack(t *testing.T) {
	deltaHead := func(base, target uint64) []byte {
		b := binary.AppendUvarint(nil, base)
		return binary.AppendUvarint(b, target)
	}
	refDelta := append(deltaHead(10, 1<<40), 0x90) // a result of a terabyte from a few bytes
	tests := []struct {
		name string
		pack []byte
		want string // "" for a pack that passes
	}{
		{"small blob", packOf(packBlob, 5, nil, []byte("hello")), ""},
		{"blob over the limit", packOf(packBlob, 1<<30, nil, []byte("hello")), "object 1 of the fetched pack is 1073741824 bytes, over the limit of 1024 bytes"},
		{"blob inflating past its header", packOf(packBlob, 3, nil, []byte("hello")), "inflates to 4 bytes"},
		{"blob shorter than its header", packOf(packBlob, 9, nil, []byte("hello")), "inflates to 5 bytes"},
		{"ref delta over the limit", packOf(packRefDelta, uint64(len(refDelta)), make([]byte, 20), refDelta), "1099511627776 bytes once its delta is applied"},
		{"ofs delta over the limit", packOf(packOfsDelta, uint64(len(refDelta)), []byte{0x05}, refDelta), "once its delta is applied"},
		{"ofs delta within", packOf(packOfsDelta, 3, []byte{0x05}, append(deltaHead(10, 12), 0x90)), ""},
		{"bad type", packOf(5, 5, nil, []byte("hello")), "type 5"},
		{"not a pack", []byte("HTTP/1.1 200 OK\r\n\r\n"), "no PACK signature"},
		{"truncated", packOf(packBlob, 5, nil, []byte("hello"))[:20], "inflating object 1"},
	}
	for _, tt := range tests {
		err := checkPack(bufio.NewReader(bytes.NewReader(tt.pack)), 1024)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v, want the pack to pass", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: %v, want an error with %q", tt.name, err, tt.want)
		case strings.Contains(tt.want, "limit") && !errors.Is(err, ErrTooLarge):
			t.Errorf("%s: %v does not wrap ErrTooLarge", tt.name, err)
		}
	}
}
