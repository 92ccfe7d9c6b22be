// Package freeport hands out loopback TCP ports to the tests and to imbench,
// which must write a port on a child's command line (a redis-server, an
// imserver process) before the child listens on it.
//
// The usual trick, listening on port 0 and closing the listener again, yields
// a port from the kernel's ephemeral range. Until the child binds it, any
// outgoing connection on the machine may be given that very port as its
// source, and the child then fails with "address already in use". With the
// packages' tests running side by side and thousands of sockets open, CI
// failed that way (a node's admin port, taken by a connection meanwhile).
//
// So the ports here come from below the ephemeral range, which connect(2)
// never hands out, and each is claimed twice over: within the process by a
// set, and against the other test processes by a lock on one byte of a
// shared lock file (an open-file-description lock, which the kernel drops
// when the process exits, however it ends). A port is also checked to be
// free by binding it, which skips the services of the machine.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// low is the first port handed out: below it lie the well-known and
// registered ports that services of the machine use (Redis on 6379 among them).
const low = 10000

// tries bounds the search for a free port, so a full range fails clearly.
const tries = 2000

var (
	mu   sync.Mutex
	held = map[int]bool{}
	lock *os.File // the shared lock file, opened on first use
)

// Take claims a free loopback port until release is called (or the
// process exits).
func Take() (port int, release func(), err error) { return TakePair(0) }

// TakePair claims a port p and, if offset is not 0, also p+offset, both free
// and both below the ephemeral range. A Redis Cluster node needs its bus port
// at p+10000.
func TakePair(offset int) (port int, release func(), err error) {
	hi, err := ephemeralLow()
	if err != nil {
		return 0, nil, err
	}
	hi -= offset // p+offset must stay below the ephemeral range too
	if hi-low < 100 {
		return 0, nil, fmt.Errorf("freeport: no room below the ephemeral range (it starts at %d) for ports %d apart", hi+offset, offset)
	}
	for range tries {
		p := low + rand.IntN(hi-low)
		ports := []int{p}
		if offset != 0 {
			ports = append(ports, p+offset)
		}
		release, err := claim(ports...)
		if err == nil {
			return p, release, nil
		}
		if !errors.Is(err, errTaken) {
			return 0, nil, err
		}
	}
	return 0, nil, fmt.Errorf("freeport: no free port in %d-%d after %d tries", low, hi, tries)
}

// Port is Take for a test: the port is released when the test ends, and a
// failure to find one fails the test.
func Port(t testing.TB) int {
	t.Helper()
	return Pair(t, 0)
}

// Pair is TakePair for a test.
func Pair(t testing.TB, offset int) int {
	t.Helper()
	p, release, err := TakePair(offset)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	return p
}

// Addr is Port as a 127.0.0.1:port address.
func Addr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(Port(t)))
}

var errTaken = errors.New("freeport: port taken")

// claim takes all the given ports or none: each must be unclaimed here,
// unlocked by any other process, and bindable.
func claim(ports ...int) (release func(), err error) {
	mu.Lock()
	defer mu.Unlock()
	if lock == nil {
		path := filepath.Join(os.TempDir(), "imbroker-ports.lock")
		if lock, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666); err != nil {
			lock = nil
			return nil, fmt.Errorf("freeport: %w", err)
		}
	}
	var got []int
	undo := func() {
		for _, p := range got {
			_ = unlockByte(lock, p)
			delete(held, p)
		}
	}
	for _, p := range ports {
		if held[p] {
			undo()
			return nil, errTaken
		}
		ok, err := lockByte(lock, p)
		if err != nil {
			undo()
			return nil, fmt.Errorf("freeport: lock port %d: %w", p, err)
		}
		if !ok {
			undo()
			return nil, errTaken
		}
		held[p] = true
		got = append(got, p)
		if !bindable(p) {
			undo()
			return nil, errTaken
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			mu.Lock()
			defer mu.Unlock()
			undo()
		})
	}, nil
}

func bindable(p int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// ephemeralLow is the first port of the kernel's ephemeral range, from which
// connect(2) picks source ports; 32768 where the kernel does not say.
func ephemeralLow() (int, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768, nil
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, fmt.Errorf("freeport: ip_local_port_range reads %q", b)
	}
	return strconv.Atoi(f[0])
}
