package doorbell

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestServeCPU measures the server's CPU per datagram at a steady ping rate, the pinging
// agents in a child process so that only the server's work is in this process's CPU time.
// It compares reading one datagram a system call, batches, and batches with coalescing in one
// run. Off by default (a measurement, ~2 min):
//
//	FLOTILLA_DOORBELL_CPU=1 [FLOTILLA_DOORBELL_CPU_RATE=10000] go test ./internal/doorbell -run TestServeCPU -v
//
// The pings go out every millisecond; FLOTILLA_DOORBELL_PINGER_SLOT=100 sends them every 100 ms
// instead, as a fleet pings on the server's slots (Server.next).
func TestServeCPU(t *testing.T) {
	if os.Getenv("FLOTILLA_DOORBELL_CPU") == "" {
		t.Skip("a measurement: set FLOTILLA_DOORBELL_CPU=1")
	}
	rate := 10000
	if v, err := strconv.Atoi(os.Getenv("FLOTILLA_DOORBELL_CPU_RATE")); err == nil && v > 0 {
		rate = v
	}
	const clusters = 100000
	const seconds = 10
	f := newFleet()
	for i := range clusters {
		f.add(cpuUID(i).String(), "ws/c"+strconv.Itoa(i), 1)
	}
	for round := range 4 {
		for _, mode := range []struct {
			name  string
			batch int
			wait  time.Duration
		}{{"one datagram per read", 1, 0}, {"batched", defaultBatch, 0}, {"batched, 2 ms coalescing", defaultBatch, 2 * time.Millisecond}} {
			if m := os.Getenv("FLOTILLA_DOORBELL_CPU_MODE"); m != "" && m != mode.name {
				continue
			}
			s, err := Listen("127.0.0.1:0", Config{Secret: secret, Clusters: f})
			if err != nil {
				t.Fatal(err)
			}
			s.batch, s.coalesce = mode.batch, mode.wait
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { s.Serve(ctx); close(done) }()
			cmd := exec.Command(os.Args[0], "-test.run", "^TestPingerProcess$")
			cmd.Env = append(os.Environ(), "FLOTILLA_DOORBELL_PINGER="+s.Addr().String(),
				fmt.Sprintf("FLOTILLA_DOORBELL_PINGER_ARGS=%d,%d,%d", clusters, rate, seconds))
			cmd.Stderr = os.Stderr
			time.Sleep(200 * time.Millisecond)
			var before, after syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &before)
			recv0, ans0, reads0 := s.Stats.Received.Load(), s.Stats.Answered.Load(), s.Stats.Reads.Load()
			if err := cmd.Run(); err != nil {
				t.Fatal(err)
			}
			syscall.Getrusage(syscall.RUSAGE_SELF, &after)
			recv, ans := s.Stats.Received.Load()-recv0, s.Stats.Answered.Load()-ans0
			reads := s.Stats.Reads.Load() - reads0
			cancel()
			<-done
			cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
			t.Logf("round %d, %s: %d received, %d answered, %.1f%% of a core, %.1f µs per datagram (user %v, system %v), %.1f datagrams per read",
				round, mode.name, recv, ans, 100*cpu.Seconds()/seconds, float64(cpu.Microseconds())/float64(max(recv, 1)),
				time.Duration(after.Utime.Nano()-before.Utime.Nano()).Round(time.Millisecond),
				time.Duration(after.Stime.Nano()-before.Stime.Nano()).Round(time.Millisecond), float64(recv)/float64(max(reads, 1)))
			if ans < recv*9/10 {
				t.Errorf("%s: %d of %d datagrams answered", mode.name, ans, recv)
			}
		}
	}
}

// TestKeepAliveCPU measures what a keepalive costs: the server's process (nothing, if the
// socket filter drops it in the kernel) and the kernel's whole path of one keepalive over
// loopback, sending and receiving, which the sender's system time holds (loopback delivers
// in the sender's system call). A measurement, off by default (~15 s):
//
//	FLOTILLA_DOORBELL_CPU=1 [FLOTILLA_DOORBELL_CPU_RATE=10000] go test ./internal/doorbell -run TestKeepAliveCPU -v
func TestKeepAliveCPU(t *testing.T) {
	if os.Getenv("FLOTILLA_DOORBELL_CPU") == "" {
		t.Skip("a measurement: set FLOTILLA_DOORBELL_CPU=1")
	}
	rate := 10000
	if v, err := strconv.Atoi(os.Getenv("FLOTILLA_DOORBELL_CPU_RATE")); err == nil && v > 0 {
		rate = v
	}
	const seconds = 10
	s, err := Listen("127.0.0.1:0", Config{Secret: secret, Clusters: newFleet()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	var idleUser, idleSys time.Duration
	for _, mode := range []string{"idle", "keepalive"} {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestPingerProcess$")
		cmd.Env = append(os.Environ(), "FLOTILLA_DOORBELL_PINGER="+s.Addr().String(), "FLOTILLA_DOORBELL_PINGER_MODE="+mode,
			fmt.Sprintf("FLOTILLA_DOORBELL_PINGER_ARGS=%d,%d,%d", 1, rate, seconds))
		var out bytes.Buffer
		cmd.Stderr = &out
		var before, after syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &before)
		reads0 := s.Stats.Reads.Load()
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v: %s", err, out.String())
		}
		syscall.Getrusage(syscall.RUSAGE_SELF, &after)
		var sent int
		var user, sys time.Duration
		if _, err := fmt.Sscanf(lastLine(out.String()), "sent %d user %d sys %d", &sent, &user, &sys); err != nil {
			t.Fatalf("the child said %q: %v", out.String(), err)
		}
		server := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
		if mode == "idle" {
			idleUser, idleSys = user, sys
		}
		// The sender's own start and ticking are in the idle run's figures: what a
		// keepalive adds is the difference.
		t.Logf("%s: %d sent in %d s; sender %v user, %v system, beyond idle %.2f µs user and %.2f µs system per keepalive; server process %.2f%% of a core, %d reads",
			mode, sent, seconds, user.Round(time.Millisecond), sys.Round(time.Millisecond),
			float64((user-idleUser).Nanoseconds())/1e3/float64(max(sent, 1)), float64((sys-idleSys).Nanoseconds())/1e3/float64(max(sent, 1)),
			100*server.Seconds()/seconds, s.Stats.Reads.Load()-reads0)
	}
	if n := s.Stats.Received.Load(); n != 0 {
		t.Errorf("the server read %d keepalives", n)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func cpuUID(i int) UID {
	var u UID
	binary.BigEndian.PutUint64(u[:8], 0x7d1e2f3a00004000)
	binary.BigEndian.PutUint64(u[8:], 0x8000000000000000|uint64(i))
	return u
}

// TestPingerProcess is TestServeCPU's child: it pings the server given in its environment
// at a steady rate from 127.3.x.y addresses (under the per-source limit), reading answers.
func TestPingerProcess(t *testing.T) {
	to := os.Getenv("FLOTILLA_DOORBELL_PINGER")
	if to == "" {
		t.Skip("TestServeCPU's child process")
	}
	var clusters, rate, seconds int
	fmt.Sscanf(os.Getenv("FLOTILLA_DOORBELL_PINGER_ARGS"), "%d,%d,%d", &clusters, &rate, &seconds)
	addr := netip.MustParseAddrPort(to)
	const perSource = 200 // datagrams per second from one address
	nsock := max(1, rate/perSource)
	socks := make([]*net.UDPConn, nsock)
	var got atomic.Int64
	for i := range socks {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 3, byte(i/250), byte(1+i%250))})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		socks[i] = c
		go func() {
			buf := make([]byte, 512)
			for {
				if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
					return
				}
				got.Add(1)
			}
		}()
	}
	if mode := os.Getenv("FLOTILLA_DOORBELL_PINGER_MODE"); mode != "" {
		// TestKeepAliveCPU's child: keepalives at the rate (or nothing, "idle", for the
		// sender's own cost of waiting), then its own CPU time on stderr.
		tick := time.NewTicker(time.Millisecond)
		start := time.Now()
		sent := 0
		for now := range tick.C {
			if now.Sub(start) >= time.Duration(seconds)*time.Second {
				break
			}
			if mode != "keepalive" {
				continue
			}
			for due := int(now.Sub(start).Seconds() * float64(rate)); sent < due; sent++ {
				socks[sent%nsock].WriteToUDPAddrPort(KeepAlive, addr)
			}
		}
		tick.Stop()
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		fmt.Fprintf(os.Stderr, "sent %d user %d sys %d\n", sent, ru.Utime.Nano(), ru.Stime.Nano())
		return
	}
	keys := make([][]byte, clusters)
	for i := range keys {
		keys[i] = ClusterKey(secret, cpuUID(i))
	}
	// Every millisecond, the pings due: rate/1000 of them, spread over the sockets. With
	// FLOTILLA_DOORBELL_PINGER_SLOT (ms), every slot instead: pings that arrive together.
	every := time.Millisecond
	if ms, err := strconv.Atoi(os.Getenv("FLOTILLA_DOORBELL_PINGER_SLOT")); err == nil && ms > 0 {
		every = time.Duration(ms) * time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	start := time.Now()
	sent := 0
	var buf [Size]byte
	for now := range tick.C {
		if now.Sub(start) >= time.Duration(seconds)*time.Second {
			break
		}
		due := int(now.Sub(start).Seconds() * float64(rate))
		for ; sent < due; sent++ {
			i := sent % clusters
			p := Packet{Kind: KindPing, Cluster: cpuUID(i), Counter: uint64(time.Now().UnixNano()), Value: 1}
			socks[sent%nsock].WriteToUDPAddrPort(p.Append(buf[:0], keys[i]), addr)
		}
	}
	time.Sleep(100 * time.Millisecond)
	t.Logf("sent %d, answered %d", sent, got.Load())
}
