package server_test

import (
	"encoding/json"
	"net"
	"net/netip"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/doorbell"
)

// bellPeer is a cluster's end of the doorbell, by hand: its key from the server over HTTPS,
// its datagrams from one UDP socket.
type bellPeer struct {
	t    *testing.T
	conn *net.UDPConn
	to   netip.AddrPort
	uid  doorbell.UID
	key  []byte
	ctr  uint64
}

func newBellPeer(t *testing.T, a *simAgent) *bellPeer {
	t.Helper()
	info, err := a.c.Doorbell(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	uid, err := doorbell.ParseUID(info.UID)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &bellPeer{t: t, conn: conn, to: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(info.Port)),
		uid: uid, key: info.Key, ctr: uint64(time.Now().UnixNano())}
}

// ping sends "my version is rev" and returns the signed answer.
func (p *bellPeer) ping(rev int64) doorbell.Packet {
	p.t.Helper()
	p.ctr++
	if _, err := p.conn.WriteToUDPAddrPort(doorbell.Packet{Kind: doorbell.KindPing, Cluster: p.uid, Counter: p.ctr, Value: uint64(rev)}.Append(nil, p.key), p.to); err != nil {
		p.t.Fatal(err)
	}
	got, ok := p.recv(5 * time.Second)
	if !ok {
		p.t.Fatal("no answer to a ping")
	}
	return got
}

// recv returns the next datagram, verified with the cluster's key.
func (p *bellPeer) recv(wait time.Duration) (doorbell.Packet, bool) {
	p.t.Helper()
	buf := make([]byte, 2*doorbell.Size)
	p.conn.SetReadDeadline(time.Now().Add(wait))
	n, _, err := p.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return doorbell.Packet{}, false
	}
	if err := doorbell.Verify(buf[:n], p.key); err != nil {
		p.t.Fatalf("a datagram not signed with the cluster's key: %v", err)
	}
	got, err := doorbell.Parse(buf[:n])
	if err != nil {
		p.t.Fatal(err)
	}
	return got, true
}

// waitRing waits for an unprompted datagram saying the state changed.
func (p *bellPeer) waitRing(what string) {
	p.t.Helper()
	got, ok := p.recv(10 * time.Second)
	if !ok {
		p.t.Fatalf("%s: no ring", what)
	}
	if !got.Ring || got.Kind != doorbell.KindChanged {
		p.t.Fatalf("%s: got %+v, want a ring saying changed", what, got)
	}
}

// TestDoorbellRings: a real server answers a cluster's pings from the fleet model (unchanged
// at its current revision, changed at an older one) and rings the address of its last ping
// when its desired state changes, by a bundle and by a role binding covering it.
func TestDoorbellRings(t *testing.T) {
	ts := start(t, t.TempDir())
	a := registerN(t, ts, []map[string]string{{"env": "bell"}})[0]
	p := newBellPeer(t, a)
	_, rev, _, err := a.c.Desired(ctxT(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.ping(rev); got.Kind != doorbell.KindUnchanged || got.Ring {
		t.Fatalf("ping at the current revision answered %+v, want unchanged", got)
	}
	if got := p.ping(rev - 1); got.Kind != doorbell.KindChanged {
		t.Fatalf("ping at an older revision answered %+v, want changed", got)
	}

	putBundle(t, ts, "app", map[string]any{"resources": cm("1"), "targets": []map[string]any{{"clusterSelector": map[string]any{"matchLabels": map[string]string{"env": "bell"}}}}})
	p.waitRing("a bundle targeting the cluster")
	a.deployment(t, "fleet-default/app")

	_, rev, _, err = a.c.Desired(ctxT(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.ping(rev); got.Kind != doorbell.KindUnchanged {
		t.Fatalf("ping at the new revision answered %+v, want unchanged", got)
	}
	spec, _ := json.Marshal(api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "someone"}, RoleRef: rbac.RoleClusterMember,
		Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "bell"}}}})
	if _, err := ts.admin.Create(ctxT(t), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRoleBinding},
		Metadata: api.ObjectMeta{Name: "someone"}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	p.waitRing("a role binding covering the cluster")
}

// TestDoorbellPollInterval: once a cluster's pings are answered its poll answers add a
// poll-after for while the doorbell answers, far longer than the HTTPS one; before, none.
func TestDoorbellPollInterval(t *testing.T) {
	ts := start(t, t.TempDir())
	a := registerN(t, ts, []map[string]string{{"env": "bell"}})[0]
	var ad client.DoorbellAd
	a.c.OnDoorbell(func(d client.DoorbellAd) { ad = d })
	_, rev, _, err := a.c.Desired(ctxT(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	if ad.Port == 0 || ad.PollAfter != 0 {
		t.Fatalf("before any ping the poll advertised %+v, want the port and no doorbell poll-after", ad)
	}
	p := newBellPeer(t, a)
	p.ping(rev)
	_, _, after, err := a.c.Desired(ctxT(t), rev)
	if err != nil {
		t.Fatal(err)
	}
	// The default doorbell poll interval is 6 h; the cluster's phase puts it 36 min to 6.6 h away.
	if ad.PollAfter < 30*time.Minute || ad.PollAfter <= 10*after {
		t.Fatalf("a pinging cluster's poll advertised %+v beside a poll-after of %v, want hours", ad, after)
	}
}

// TestDoorbellKeyRotation: rotate-keys rotates the doorbell's secret too. A cluster's old
// key is still answered, asked to fetch the new one, which the server then hands out.
func TestDoorbellKeyRotation(t *testing.T) {
	ts := start(t, t.TempDir())
	a := registerN(t, ts, []map[string]string{{"env": "bell"}})[0]
	_, rev, _, err := a.c.Desired(ctxT(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	p := newBellPeer(t, a)
	if got := p.ping(rev); got.Rekey {
		t.Fatal("rekey asked before any rotation")
	}
	if _, err := ts.admin.RotateKeys(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	// The doorbell reads the ring's secrets again within a second.
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := p.ping(rev)
		if got.Rekey && got.Kind == doorbell.KindUnchanged {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old key after a rotation was answered %+v, want unchanged asking for a rekey", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	info, err := a.c.Doorbell(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if string(info.Key) == string(p.key) {
		t.Fatal("the key handed out after a rotation is the old one")
	}
	p.key = info.Key
	if got := p.ping(rev); got.Rekey {
		t.Fatal("rekey asked of the new key")
	}
}
