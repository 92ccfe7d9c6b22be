package imserver_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// keepAlive opens a TCP connection to addr and sends one complete request
// that the node answers without an upgrade (GET /ws → 426), leaving the
// connection in HTTP keep-alive. It returns the connection and the status
// of the answer; 0 means no answer within wait.
func keepAlive(t *testing.T, addr string, wait time.Duration) (net.Conn, int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: node\r\n\r\n"); err != nil {
		return c, 0, err.Error()
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return c, 0, err.Error()
	}
	body, _ := io.ReadAll(io.LimitReader(res.Body, 512))
	res.Body.Close()
	_ = c.SetDeadline(time.Time{})
	return c, res.StatusCode, string(body)
}

// TestIdleKeepAliveClosed: a connection that sent one cheap request and
// then nothing is closed after -idle-timeout instead of holding a
// descriptor for ever.
func TestIdleKeepAliveClosed(t *testing.T) {
	c := startProcCluster(t)
	p := c.startProc("idle", "-idle-timeout", "1s")
	addr := strings.TrimSuffix(strings.TrimPrefix(p.url, "ws://"), "/ws")
	var conns []net.Conn
	for i := 0; i < 50; i++ {
		conn, status, body := keepAlive(t, addr, 30*time.Second)
		defer conn.Close()
		if status != http.StatusUpgradeRequired {
			t.Fatalf("GET /ws without an upgrade: %d %s, want 426", status, body)
		}
		conns = append(conns, conn)
	}
	for i, conn := range conns {
		// Closed by the node: the read ends with EOF. The deadline only
		// bounds a broken build; the node closes after a second.
		_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("connection %d: read %v, want EOF from the node's close", i, err)
		}
	}
}

// TestDescriptorExhaustion runs a node under a descriptor limit of 400
// and holds keep-alive connections until it refuses: a new connection then
// gets 503 "fds" at once (not silence), the refusals are counted, the
// admin listener still answers, and once the flood ends real clients
// connect again.
func TestDescriptorExhaustion(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatal("prlimit (util-linux) not found")
	}
	c := startProcCluster(t)
	p := c.startProcUnder([]string{prlimit, "--nofile=400:400"}, "fds", "-idle-timeout", "1h")
	c.waitHelperNodes("fds")
	addr := strings.TrimSuffix(strings.TrimPrefix(p.url, "ws://"), "/ws")
	var held []net.Conn
	defer func() {
		for _, conn := range held {
			conn.Close()
		}
	}()
	refused := false
	for i := 0; i < 400 && !refused; i++ {
		conn, status, body := keepAlive(t, addr, 10*time.Second)
		held = append(held, conn)
		switch status {
		case http.StatusUpgradeRequired:
		case http.StatusServiceUnavailable:
			if !strings.Contains(body, `"reason":"fds"`) {
				t.Fatalf("503 without the fds reason: %s", body)
			}
			refused = true
		default:
			t.Fatalf("connection %d: status %d (%s); want 426, or 503 fds near the limit", i, status, body)
		}
	}
	if !refused {
		t.Fatalf("%d connections under a limit of 400 and no 503 fds refusal", len(held))
	}
	t.Logf("refused after %d held connections", len(held)-1)
	if code, body := getJSON(t, p.admin+"/readyz"); code != http.StatusOK {
		t.Errorf("admin /readyz at the limit: %d %s", code, body)
	}
	if v := p.metric(t, `im_refusals_total{reason="fds"}`); v < 1 {
		t.Errorf(`im_refusals_total{reason="fds"} = %v, want ≥ 1`, v)
	}
	for _, conn := range held {
		conn.Close()
	}
	held = nil
	// The node sees the closes as it reads; a client gets in once it has.
	checkFor(t, 30*time.Second, func() error {
		u, err := c.helper.PrevConnectServer(bg, fmt.Sprintf("after-%d", time.Now().UnixNano()), "")
		if err != nil {
			return err
		}
		w, err := dialWS(u)
		if err != nil {
			return err
		}
		w.conn.CloseNow()
		return nil
	})
}
