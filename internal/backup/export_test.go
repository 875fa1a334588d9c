package backup

import (
	"bytes"
	"os"
)

// ForgeForTest makes a file with a valid checksum whose header is headerJSON.
func ForgeForTest(headerJSON string) []byte {
	var b bytes.Buffer
	e, _ := newEncoder(&b, Header{})
	e.bw.Reset(e.zw)
	e.bytes([]byte(headerJSON))
	e.finish()
	return b.Bytes()
}

// ForgeFileForTest makes an otherwise valid file carrying a file at path.
func ForgeFileForTest(path string) []byte {
	var b bytes.Buffer
	e, _ := newEncoder(&b, Header{})
	e.file(path, os.FileMode(0o600), []byte("x"))
	e.finish()
	return b.Bytes()
}
