package imserver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/wire"
)

// rawFrame is one frame as it crossed the wire.
type rawFrame struct {
	op      int
	payload []byte
}

// rawClient is a WebSocket client that keeps every byte the node sends, so
// a test can check the frame sequence itself (coder/websocket's client
// would hide what follows a close frame).
type rawClient struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, wsURL string) *rawClient {
	t.Helper()
	u, err := url.Parse(wsURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	return handshakeRaw(t, c, u, bufio.NewReader(c))
}

// handshakeRaw sends the upgrade request for u on c and reads the answer
// through br, which reads c.
func handshakeRaw(t *testing.T, c net.Conn, u *url.URL, br *bufio.Reader) *rawClient {
	t.Helper()
	t.Cleanup(func() { c.Close() })
	var key [16]byte
	_, _ = rand.Read(key[:])
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n", u.RequestURI(), u.Host, base64.StdEncoding.EncodeToString(key[:]))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	rc := &rawClient{c: c, br: br}
	// The first frame says the socket is attached and caught up.
	if f, err := rc.readFrame(); err != nil || f.op != wire.OpText || !bytes.HasPrefix(f.payload, []byte(`{"type":"recovered","first":true`)) {
		t.Fatalf("first frame: %+v %v, want recovered/first", f, err)
	}
	return rc
}

// readFrame reads one server frame and checks its header: final, no RSV
// bits, unmasked.
func (r *rawClient) readFrame() (rawFrame, error) {
	var h [2]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return rawFrame{}, err
	}
	if h[0]&0xf0 != 0x80 || h[1]&0x80 != 0 {
		return rawFrame{}, fmt.Errorf("bad frame header % x", h)
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			return rawFrame{}, err
		}
		n = int(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			return rawFrame{}, err
		}
		n = int(binary.BigEndian.Uint64(b[:]))
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r.br, p); err != nil {
		return rawFrame{}, err
	}
	return rawFrame{op: int(h[0] & 0x0f), payload: p}, nil
}

// sendClose answers a close frame (masked, as a client must).
func (r *rawClient) sendClose(payload []byte) {
	var mask [4]byte
	b := []byte{0x88, 0x80 | byte(len(payload))}
	b = append(b, mask[:]...) // an all-zero mask leaves the payload as is
	_, _ = r.c.Write(append(b, payload...))
}

// TestNoDataAfterClose: a ping, a close, a ForceOffline and a drain's close
// race a 1,000-frame burst on one socket. Whatever wins, the bytes on the
// wire are whole frames, data frames arrive in order, and no frame follows
// the close frame (RFC 6455 §5.5.1).
func TestNoDataAfterClose(t *testing.T) {
	s := startTestNode(t, Config{})
	h, err := imhelper.New(context.Background(), imhelper.Options{RedisURL: s.cfg.RedisURL})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const burst = 1000
	for trial := 0; trial < 12; trial++ {
		id := "racer-" + strconv.Itoa(trial)
		u, err := h.PrevConnectServer(context.Background(), id, "")
		if err != nil {
			t.Fatal(err)
		}
		rc := dialRaw(t, u)
		var cn *conn
		waitFor(t, 5*time.Second, func() error {
			if c := s.hub.get(id); c != nil {
				cn = c.connList()[0]
				return nil
			}
			return fmt.Errorf("%s not attached", id)
		})
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 0; i < burst; i++ {
				if !cn.enqueue(outFrame{b: []byte(`{"seq":` + strconv.Itoa(i) + `}`)}) {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			switch trial % 4 {
			case 0:
				cn.close(websocket.StatusNormalClosure, "bye", wire.ReasonClosed)
			case 1:
				if err := h.ForceOffline(context.Background(), id); err != nil {
					t.Error(err)
				}
			case 2:
				cn.close(wire.CloseGoingAway, "node draining", wire.ReasonDrain)
			case 3:
				s.startGoroutine(func() { s.ping(cn) })
				cn.close(wire.CloseMoved, "moved", wire.ReasonMoved)
			}
		}()
		next, closed := 0, false
		for {
			f, err := rc.readFrame()
			if err != nil {
				if !closed {
					t.Fatalf("trial %d: %v before a close frame", trial, err)
				}
				break // EOF after the close handshake
			}
			if closed {
				t.Fatalf("trial %d: a frame (opcode %d, %q) followed the close frame", trial, f.op, f.payload)
			}
			switch f.op {
			case wire.OpText:
				if want := `{"seq":` + strconv.Itoa(next) + `}`; string(f.payload) != want {
					t.Fatalf("trial %d: got %s, want %s", trial, f.payload, want)
				}
				next++
			case wire.OpPing:
			case wire.OpClose:
				closed = true
				rc.sendClose(f.payload)
			default:
				t.Fatalf("trial %d: unexpected opcode %d", trial, f.op)
			}
		}
		wg.Wait()
	}
}
