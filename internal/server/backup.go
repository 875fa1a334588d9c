package server

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/backup"
)

// backup streams a backup file of the whole state: one consistent snapshot of the store,
// the TLS files and, when it lives in the data directory, the key-encryption key. An error
// after the first byte can only cut the stream: the client sees the checksum trailer missing.
func (s *Server) backup(w http.ResponseWriter, r *http.Request) {
	src, ok := s.store.(backup.Source)
	if !ok {
		apiserver.WriteError(w, errBackupUnsupported)
		return
	}
	start := time.Now()
	withKEK := s.cfg.KEKFile == "" && s.cfg.KEK == ""
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="flotilla-`+strconv.FormatInt(start.Unix(), 10)+`.backup"`)
	h, err := backup.Write(r.Context(), w, src, s.cfg.DataDir, withKEK)
	if err != nil {
		s.log.Error("backup failed", "err", err)
		panic(http.ErrAbortHandler)
	}
	s.log.Info("backup sent", "revision", h.Revision, "kekIncluded", h.KEKIncluded, "took", time.Since(start).Round(time.Millisecond))
}

var errBackupUnsupported = errors.New("this store cannot be backed up")
