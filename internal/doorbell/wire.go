// Package doorbell owns the datagram doorbell: a tiny authenticated UDP exchange beside the
// agent's HTTPS polls, by which a server tells an agent "your desired state changed" or "a
// tunnel is wanted" within a round trip instead of at the agent's next poll. It holds the
// wire format, the key derivation, the server's listener (replay state, per-source limits,
// a paced sender of rings) and the agent's side (a socket that many clusters may share).
//
// Content and status stay on HTTPS: a datagram carries a cluster, a counter, a version and
// a verdict, nothing else. The package imports no server package, so the agent may use it.
package doorbell

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"
)

// Wire format, every datagram (either way) exactly Size bytes, big-endian:
//
//	0      version (WireVersion)
//	1      kind
//	2      flags (FlagRing: an unprompted ring, not an answer; FlagRekey: the key that signed
//	       the ping is retired, fetch the new one over HTTPS; FlagKeepAlive: on a ping, the
//	       agent sends keepalives between pings; on its answer, value is two delays;
//	       FlagAcks: the agent acknowledges rings; FlagRung: a ping acknowledging a ring)
//	3      zero
//	4:20   cluster UID, the 16 bytes of its UUID
//	20:28  counter: a ping's own counter; an answer echoes it; a ring carries the server's
//	28:36  value: a ping's desired version; otherwise a delay in milliseconds, or, in an
//	       answer with FlagKeepAlive, the keepalive interval in milliseconds (bits 32-63)
//	       and the delay in milliseconds (bits 0-31)
//	36:52  tag: HMAC-SHA256(cluster key, bytes 0:36), first 16 bytes
//
// Every answer and ring is the size of a ping, so the server never sends more than it got.
//
// Between pings an agent that was offered keepalives sends KeepAlive, one byte, as often as
// the answers say: it keeps the NATs on the way from forgetting the path by which rings
// come, at a fraction of a ping's cost, as the server's socket drops every datagram that is
// not Size bytes long before it is read (a filter in the kernel). A keepalive is not
// authenticated and changes nothing; only pings tell the server where a cluster is.
const (
	WireVersion = 1
	Size        = 52
	tagOffset   = 36
	tagSize     = 16
)

// Kind says what a datagram means.
type Kind uint8

// Kinds. A ping goes from agent to server; the others from server to agent.
const (
	// KindPing: "cluster C, my desired version is V".
	KindPing Kind = 1
	// KindUnchanged: nothing for you; ping again after Delay.
	KindUnchanged Kind = 2
	// KindChanged: your desired state changed; poll over HTTPS after Delay (0: now).
	KindChanged Kind = 3
	// KindTunnel: a tunnel is wanted; poll over HTTPS now for its token.
	KindTunnel Kind = 4
	// KindLater: the server cannot answer now (starting); ping again after Delay.
	KindLater Kind = 5
)

func (k Kind) String() string {
	switch k {
	case KindPing:
		return "ping"
	case KindUnchanged:
		return "unchanged"
	case KindChanged:
		return "changed"
	case KindTunnel:
		return "tunnel"
	case KindLater:
		return "later"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Flags.
const (
	// FlagRing marks a datagram the server sent unprompted.
	FlagRing = 1
	// FlagRekey marks an answer to a ping signed with a retired key (the server's keys were
	// rotated): still answered until the key's grace ends, but the agent should fetch its
	// new key over HTTPS now.
	FlagRekey = 2
	// FlagKeepAlive on a ping says the agent sends keepalives between its pings; the answer
	// carries it too, and then its value holds the keepalive interval beside the delay.
	FlagKeepAlive = 4
	// FlagAcks on a ping says its agent acknowledges rings: the server rings it again when
	// a ring goes unacknowledged (lost on the way), rather than waiting for its next ping.
	FlagAcks = 8
	// FlagRung marks a ping an agent sends on taking a ring, which acknowledges it. It is
	// answered without comparing versions: the ring already sent the agent to the API.
	FlagRung   = 16
	flagsKnown = FlagRing | FlagRekey | FlagKeepAlive | FlagAcks | FlagRung
)

// KeepAlive is the keepalive datagram.
var KeepAlive = []byte{0}

// packDelays is an answer's value with FlagKeepAlive: two durations in milliseconds, each
// at most 2^32-1 (49 days).
func packDelays(delay, keepAlive time.Duration) uint64 {
	ms := func(d time.Duration) uint64 { return min(uint64(max(d, 0)/time.Millisecond), 1<<32-1) }
	return ms(keepAlive)<<32 | ms(delay)
}

// Delays reads an answer's value: the delay it asks for, and with FlagKeepAlive the
// keepalive interval (0 otherwise).
func (p Packet) Delays() (delay, keepAlive time.Duration) {
	if !p.KeepAlive {
		return time.Duration(min(p.Value, uint64(math.MaxInt64/time.Millisecond))) * time.Millisecond, 0
	}
	return time.Duration(p.Value&(1<<32-1)) * time.Millisecond, time.Duration(p.Value>>32) * time.Millisecond
}

// UID is a cluster's UID as 16 bytes.
type UID [16]byte

// ParseUID reads a UUID in its text form (8-4-4-4-12 hex digits).
func ParseUID(s string) (UID, error) {
	var u UID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("cluster UID %.40q is not a UUID", s)
	}
	hexs := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	if _, err := hex.Decode(u[:], []byte(hexs)); err != nil {
		return u, fmt.Errorf("cluster UID %.40q is not a UUID", s)
	}
	return u, nil
}

// String is the UUID's text form, as the fleet model keys clusters.
func (u UID) String() string {
	var b [36]byte
	return string(u.Append(b[:0]))
}

// Append appends the UUID's text form to b: with b on the caller's stack, a look-up by the
// text form allocates nothing (every ping makes one).
func (u UID) Append(b []byte) []byte {
	b = hex.AppendEncode(b, u[0:4])
	b = hex.AppendEncode(append(b, '-'), u[4:6])
	b = hex.AppendEncode(append(b, '-'), u[6:8])
	b = hex.AppendEncode(append(b, '-'), u[8:10])
	return hex.AppendEncode(append(b, '-'), u[10:16])
}

// Packet is one datagram, decoded.
type Packet struct {
	Kind  Kind
	Ring  bool
	Rekey bool
	// KeepAlive, Acks and Rung are FlagKeepAlive, FlagAcks and FlagRung.
	KeepAlive, Acks, Rung bool
	Cluster               UID
	Counter               uint64
	// Value is a ping's desired version, or an answer's delay in milliseconds.
	Value uint64
}

// ClusterKey derives a cluster's doorbell key from the server's secret, so that the server
// keeps no key per cluster: it derives one for each datagram.
func ClusterKey(secret []byte, uid UID) []byte {
	k := clusterKey(secret, uid)
	return k[:]
}

const keySize = sha256.Size

func clusterKey(secret []byte, uid UID) [keySize]byte {
	const label = "flotilla doorbell v1\x00"
	var msg [len(label) + len(uid)]byte
	copy(msg[:], label)
	copy(msg[len(label):], uid[:])
	return hmacSHA256(secret, msg[:])
}

// hmacSHA256 is HMAC-SHA256 (RFC 2104) of a message of at most a block under a key of at
// most a block, on the stack with sha256.Sum256. Written out because crypto/hmac makes
// new digests for every key, and marshals them on Reset: about 1.2 KB of garbage per
// datagram, whose key (the cluster's) is never the last one's. At a million clusters'
// pings that garbage was the idle server's largest allocation. TestMAC checks it against
// crypto/hmac.
func hmacSHA256(key, msg []byte) [sha256.Size]byte {
	if len(key) > sha256.BlockSize || len(msg) > sha256.BlockSize {
		return slowHMAC(key, msg)
	}
	var buf [2 * sha256.BlockSize]byte
	copy(buf[:], key)
	for i := range sha256.BlockSize {
		buf[i] ^= 0x36
	}
	n := copy(buf[sha256.BlockSize:], msg)
	inner := sha256.Sum256(buf[:sha256.BlockSize+n])
	for i := range sha256.BlockSize {
		buf[i] ^= 0x36 ^ 0x5c
	}
	copy(buf[sha256.BlockSize:], inner[:])
	return sha256.Sum256(buf[:sha256.BlockSize+sha256.Size])
}

// slowHMAC is crypto/hmac's, on copies: what an interface's Write is given escapes, and
// hmacSHA256's callers keep their buffers on the stack.
func slowHMAC(key, msg []byte) [sha256.Size]byte {
	h := hmac.New(sha256.New, bytes.Clone(key))
	h.Write(bytes.Clone(msg))
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out
}

// Append encodes p, tagged with key, onto dst.
func (p Packet) Append(dst []byte, key []byte) []byte {
	var b [Size]byte
	b[0] = WireVersion
	b[1] = byte(p.Kind)
	if p.Ring {
		b[2] |= FlagRing
	}
	if p.Rekey {
		b[2] |= FlagRekey
	}
	if p.KeepAlive {
		b[2] |= FlagKeepAlive
	}
	if p.Acks {
		b[2] |= FlagAcks
	}
	if p.Rung {
		b[2] |= FlagRung
	}
	copy(b[4:20], p.Cluster[:])
	binary.BigEndian.PutUint64(b[20:28], p.Counter)
	binary.BigEndian.PutUint64(b[28:36], p.Value)
	sum := hmacSHA256(key, b[:tagOffset])
	copy(b[tagOffset:], sum[:tagSize])
	return append(dst, b[:]...)
}

// Errors of Parse.
var (
	ErrSize    = errors.New("doorbell datagram has the wrong size")
	ErrVersion = errors.New("doorbell datagram of an unknown version")
	ErrKind    = errors.New("doorbell datagram of an unknown kind")
	ErrTag     = errors.New("doorbell datagram not signed with the cluster's key")
)

// Parse decodes a datagram without checking its tag: the cluster, which names the key,
// is known only after it (Verify checks the tag).
func Parse(b []byte) (Packet, error) {
	var p Packet
	if len(b) != Size {
		return p, ErrSize
	}
	if b[0] != WireVersion {
		return p, ErrVersion
	}
	p.Kind = Kind(b[1])
	if p.Kind < KindPing || p.Kind > KindLater {
		return p, ErrKind
	}
	if b[2]&^flagsKnown != 0 || b[3] != 0 {
		return p, ErrVersion
	}
	p.Ring = b[2]&FlagRing != 0
	p.Rekey = b[2]&FlagRekey != 0
	p.KeepAlive = b[2]&FlagKeepAlive != 0
	p.Acks = b[2]&FlagAcks != 0
	p.Rung = b[2]&FlagRung != 0
	copy(p.Cluster[:], b[4:20])
	p.Counter = binary.BigEndian.Uint64(b[20:28])
	p.Value = binary.BigEndian.Uint64(b[28:36])
	return p, nil
}

// Verify checks a parsed datagram's tag with key, in constant time.
func Verify(b []byte, key []byte) error {
	if len(b) != Size {
		return ErrSize
	}
	sum := hmacSHA256(key, b[:tagOffset])
	if !hmac.Equal(b[tagOffset:], sum[:tagSize]) {
		return ErrTag
	}
	return nil
}
