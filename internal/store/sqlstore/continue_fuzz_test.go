package sqlstore

import (
	"errors"
	"testing"

	"flotilla.dev/internal/store"
)

// FuzzDecodeContinue feeds arbitrary continue tokens, which come straight from clients: a
// token is refused with ErrInvalidContinue or names a positive revision, and what is accepted
// encodes back to a token that decodes to the same position.
func FuzzDecodeContinue(f *testing.F) {
	f.Add(encodeContinue(continueToken{Rev: 1, After: 0}))
	f.Add(encodeContinue(continueToken{Rev: 1 << 62, After: 1 << 40}))
	f.Add("")
	f.Add("eyJyIjowLCJhIjo1fQ")       // {"r":0,"a":5}
	f.Add("eyJyIjotMywiYSI6NX0")      // {"r":-3,"a":5}
	f.Add("eyJyIjoxLCJhIjoxLCJ4Ijp9") // truncated JSON
	f.Add("not base64 !")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := decodeContinue(s)
		if err != nil {
			if !errors.Is(err, store.ErrInvalidContinue) {
				t.Fatalf("decodeContinue(%q): %v, want ErrInvalidContinue", s, err)
			}
			return
		}
		if tok.Rev <= 0 {
			t.Fatalf("decodeContinue(%q) accepted revision %d", s, tok.Rev)
		}
		again, err := decodeContinue(encodeContinue(tok))
		if err != nil || again != tok {
			t.Fatalf("token %q decodes to %+v, which re-encodes to %+v, %v", s, tok, again, err)
		}
	})
}

// FuzzContinueRoundTrip: every position the server hands out decodes to itself.
func FuzzContinueRoundTrip(f *testing.F) {
	f.Add(int64(1), int64(0))
	f.Add(int64(1<<63-1), int64(-1))
	f.Add(int64(0), int64(7))
	f.Fuzz(func(t *testing.T, rev, after int64) {
		tok := continueToken{Rev: rev, After: after}
		got, err := decodeContinue(encodeContinue(tok))
		if rev <= 0 {
			if !errors.Is(err, store.ErrInvalidContinue) {
				t.Fatalf("revision %d: %+v, %v; want ErrInvalidContinue", rev, got, err)
			}
			return
		}
		if err != nil || got != tok {
			t.Fatalf("%+v round-trips to %+v, %v", tok, got, err)
		}
	})
}
