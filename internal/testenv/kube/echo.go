package kube

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	utilexec "k8s.io/utils/exec"
)

// EchoContainer is a Container for tests: exec runs cat, echo ARGS (and "to stderr" on
// stderr) and exit N; attach writes "attached" and echoes stdin; port 8080 is a loopback
// server answering each line in upper case; the log is "line 1" and then, when followed,
// every line sent on Log.
type EchoContainer struct {
	Log  chan string
	port string
}

// NewEchoContainer starts its port's server; it is stopped when t ends.
func NewEchoContainer(t testing.TB) *EchoContainer {
	return &EchoContainer{Log: make(chan string), port: upperServer(t)}
}

func (c *EchoContainer) Exec(_ context.Context, cmd []string, in io.Reader, out, errOut io.Writer) error {
	switch cmd[0] {
	case "cat":
		_, err := io.Copy(out, in)
		return err
	case "echo":
		fmt.Fprintln(out, strings.Join(cmd[1:], " "))
		fmt.Fprintln(errOut, "to stderr")
		return nil
	case "exit":
		n, _ := strconv.Atoi(cmd[1])
		return utilexec.CodeExitError{Err: fmt.Errorf("exit %d", n), Code: n}
	}
	return utilexec.CodeExitError{Err: fmt.Errorf("%s: not found", cmd[0]), Code: 127}
}

func (c *EchoContainer) Attach(_ context.Context, in io.Reader, out, _ io.Writer) error {
	fmt.Fprintln(out, "attached")
	_, err := io.Copy(out, in)
	return err
}

func (c *EchoContainer) PortForward(ctx context.Context, port int32, stream io.ReadWriteCloser) error {
	if port != 8080 {
		return fmt.Errorf("nothing listens on port %d", port)
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", c.port)
	if err != nil {
		return err
	}
	defer conn.Close()
	go func() {
		io.Copy(conn, stream)
		conn.(*net.TCPConn).CloseWrite()
	}()
	_, err = io.Copy(stream, conn)
	return err
}

func (c *EchoContainer) Logs(ctx context.Context, w io.Writer, follow bool) error {
	io.WriteString(w, "line 1\n")
	for follow {
		select {
		case <-ctx.Done():
			return nil
		case l := <-c.Log:
			io.WriteString(w, l+"\n")
		}
	}
	return nil
}

// upperServer answers each line in upper case: the pod's port 8080.
func upperServer(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					io.WriteString(c, strings.ToUpper(l))
				}
			})
		}
	})
	return ln.Addr().String()
}
