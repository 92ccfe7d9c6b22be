package freeport

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func TestPortsBelowEphemeralRangeAndDistinct(t *testing.T) {
	eph, err := ephemeralLow()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for range 50 {
		p := Port(t)
		if p < low || p >= eph {
			t.Fatalf("port %d outside %d-%d", p, low, eph)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
	p := Pair(t, 10000)
	if p+10000 >= eph || seen[p] || seen[p+10000] {
		t.Fatalf("pair %d/%d overlaps or reaches the ephemeral range", p, p+10000)
	}
}

func TestListenedPortSkipped(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(Port(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := l.Addr().(*net.TCPAddr).Port
	mu.Lock()
	delete(held, p) // as if another program listened there
	mu.Unlock()
	if err := unlockByte(lock, p); err != nil {
		t.Fatal(err)
	}
	if _, err := claim(p); err != errTaken {
		t.Fatalf("claim of a port in use: %v, want errTaken", err)
	}
}

func TestReleasedPortCanBeClaimedAgain(t *testing.T) {
	p, release, err := Take()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := claim(p); err != errTaken {
		t.Fatalf("second claim in the process: %v, want errTaken", err)
	}
	release()
	release() // idempotent
	again, err := claim(p)
	if err != nil {
		t.Fatalf("claim after release: %v", err)
	}
	again()
}

// TestClaimHeldAcrossProcesses runs this test binary again as a second
// process, which must not get a port this one holds, and gets it once
// released.
func TestClaimHeldAcrossProcesses(t *testing.T) {
	if v := os.Getenv("FREEPORT_TRY"); v != "" {
		p, _ := strconv.Atoi(v)
		if _, err := claim(p); err != nil {
			os.Stdout.WriteString("refused\n")
		} else {
			os.Stdout.WriteString("claimed\n")
		}
		return
	}
	try := func(p int) string {
		cmd := exec.Command(os.Args[0], "-test.run=^TestClaimHeldAcrossProcesses$")
		cmd.Env = append(os.Environ(), "FREEPORT_TRY="+strconv.Itoa(p))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return strings.Fields(string(out))[0]
	}
	p, release, err := Take()
	if err != nil {
		t.Fatal(err)
	}
	if got := try(p); got != "refused" {
		t.Fatalf("another process while held: %s, want refused", got)
	}
	release()
	if got := try(p); got != "claimed" {
		t.Fatalf("another process after release: %s, want claimed", got)
	}
}
