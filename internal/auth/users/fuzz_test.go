package users

import (
	"context"
	"testing"
	"unicode/utf8"
)

// FuzzDecode checks that any stored string either fails to decode or decodes to parameters
// within bounds that encode back to the very same string, and that Verify never panics.
func FuzzDecode(f *testing.F) {
	h := NewHasher(testParams, 1)
	good, _ := h.Hash(context.Background(), "a password here")
	f.Add(good, "a password here")
	f.Add("$argon2id$v=19$m=64,t=1,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "x")
	f.Add("$argon2id$v=19$m=99999999,t=1,p=1$AAAA$AAAA", "")
	f.Add("$$$$$", "")
	f.Fuzz(func(t *testing.T, enc, pw string) {
		p, salt, key, err := decode(enc)
		if err != nil {
			return
		}
		if p.Memory > maxMemory || p.Time > maxTime || p.Threads > maxThreads || len(key) > maxKeyLen {
			t.Fatalf("decoded out-of-bounds parameters %+v", p)
		}
		if got := encode(p, salt, key); got != enc {
			t.Fatalf("decode/encode changed %q into %q", enc, got)
		}
		if p.Memory <= 1024 { // keep the fuzzer fast
			if _, err := h.Verify(context.Background(), enc, pw); err != nil {
				t.Fatalf("Verify of a decodable hash: %v", err)
			}
		}
	})
}

// FuzzCheckPassword checks that an accepted password meets the stated policy.
func FuzzCheckPassword(f *testing.F) {
	f.Add("alice", "a long enough one")
	f.Add("alice", "Password1234")
	f.Add("x", "\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4")
	f.Fuzz(func(t *testing.T, user, pw string) {
		if CheckPassword(user, pw) != nil {
			return
		}
		if !utf8.ValidString(pw) || utf8.RuneCountInString(pw) < MinPasswordLength || len(pw) > MaxPasswordBytes {
			t.Fatalf("accepted %q", pw)
		}
		if _, ok := common[toLower(pw)]; ok {
			t.Fatalf("accepted common password %q", pw)
		}
	})
}

func toLower(s string) string {
	b := []rune(s)
	for i, r := range b {
		if r >= 'A' && r <= 'Z' {
			b[i] = r + 'a' - 'A'
		}
	}
	return string(b)
}
