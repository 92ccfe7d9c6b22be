// Package redistest starts private redis-server processes for tests, on free
// loopback ports, never the shared instance on 6379.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/freeport"
)

// Server is a redis-server child process.
type Server struct {
	Addr  string // 127.0.0.1:port
	Port  int
	extra []string // more redis-server arguments
	dir   string
	cmd   *exec.Cmd
	t     testing.TB
}

// URL returns redis://Addr/0.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Start runs a redis-server with no persistence on a free port and stops it
// when the test ends. A missing redis-server fails the test: it is a
// required dependency (.ci/run installs it).
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t)
}

// StartWith is Start with more redis-server arguments, such as
// "--maxmemory", "32mb".
func StartWith(t testing.TB, args ...string) *Server {
	t.Helper()
	_, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found (install the redis-server package): %v", err)
	}
	s := &Server{dir: t.TempDir(), t: t, extra: args}
	s.Port = freeport.Port(t) // held until the test ends, so Restart finds it again
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
	s.start()
	t.Cleanup(s.Kill)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	s.cmd = exec.Command("redis-server",
		"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"))
	s.cmd.Args = append(s.cmd.Args, s.extra...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("failed to start redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err == nil {
			_, _ = c.Write([]byte("PING\r\n"))
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if line == "+PONG\r\n" {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	s.t.Fatalf("redis-server on %s did not come up:\n%s", s.Addr, log)
}

// Kill stops the server with SIGKILL (as a crash would). Idempotent.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// Pause stops the server with SIGSTOP, as a hung Redis: its sockets stay
// open and the kernel still accepts connections on its port, but nothing
// answers. Resume undoes it; Kill and Restart work on a paused server.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT). It is harmless on one that
// is running, so a test can register it as a cleanup.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.t.Helper()
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Errorf("failed to send %v to redis-server: %v", sig, err)
	}
}

// Restart starts the server again on the same port, empty.
func (s *Server) Restart() {
	s.Kill()
	s.start()
}

// Exec runs one redis-cli command against the server and returns its output.
func (s *Server) Exec(args ...string) (string, error) {
	out, err := exec.Command("redis-cli", append([]string{"-p", strconv.Itoa(s.Port)}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("redis-cli %v: %w", args, err)
	}
	return string(out), nil
}
