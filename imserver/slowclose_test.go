package imserver

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/wire"
)

// throttled lets at most per bytes through every 100 ms: a client on a slow
// link, or one whose page is busy, reads slowly but does read.
type throttled struct {
	c    net.Conn
	per  int
	left int
	next time.Time
}

func (r *throttled) Read(p []byte) (int, error) {
	if r.left == 0 {
		time.Sleep(time.Until(r.next))
		r.next = time.Now().Add(100 * time.Millisecond)
		r.left = r.per
	}
	if len(p) > r.left {
		p = p[:r.left]
	}
	n, err := r.c.Read(p)
	r.left -= n
	return n, err
}

// dialSlow is dialRaw for a client with a small receive buffer that reads
// per bytes every 100 ms, handshake included.
func dialSlow(t *testing.T, wsURL string, rcvbuf, per int) *rawClient {
	t.Helper()
	u, err := url.Parse(wsURL)
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	return handshakeRaw(t, c, u, bufio.NewReaderSize(&throttled{c: c, per: per}, 4096))
}

// slowResult is what one slow client saw.
type slowResult struct {
	id     string
	frames int    // data frames, all whole and in order
	code   int    // close code received, 0 if none
	err    string // how the stream ended if not with a close frame, or what was wrong
}

// readUntilClose reads a slow client's stream: broadcast frames with seq
// 0, 1, 2, … and then a close frame, answered; nothing may follow it.
func readUntilClose(id string, rc *rawClient) slowResult {
	res := slowResult{id: id}
	for {
		f, err := rc.readFrame()
		if err != nil {
			if res.code == 0 {
				res.err = fmt.Sprintf("%v after %d frames, no close frame", err, res.frames)
			}
			return res
		}
		if res.code != 0 {
			res.err = fmt.Sprintf("a frame (opcode %d) followed the close frame", f.op)
			return res
		}
		switch f.op {
		case wire.OpText:
			var m struct {
				Data struct {
					Seq int `json:"seq"`
				} `json:"data"`
			}
			if err := json.Unmarshal(f.payload, &m); err != nil || m.Data.Seq != res.frames {
				res.err = fmt.Sprintf("frame %d is %.60q (%v)", res.frames, f.payload, err)
				return res
			}
			res.frames++
		case wire.OpPing: // pings come at a random moment within the interval
			var mask [4]byte // all zero: the payload goes as is
			_, _ = rc.c.Write(append(append([]byte{0x80 | wire.OpPong, 0x80 | byte(len(f.payload))}, mask[:]...), f.payload...))
		case wire.OpClose:
			if len(f.payload) < 2 {
				res.err = "close frame without a code"
				return res
			}
			res.code = int(binary.BigEndian.Uint16(f.payload))
			rc.sendClose(f.payload[:2])
		default:
			res.err = fmt.Sprintf("unexpected opcode %d", f.op)
			return res
		}
	}
}

// TestSlowReaderSeesCloseCode: clients that read, but more slowly than
// messages arrive, are closed as slow consumers and receive the 4003 close
// frame after every whole frame sent before it (issue 13). Before, the
// close frame waited behind a write of the whole backlog into megabytes of
// kernel send buffer, and the 2 s close bound cut TCP first: every client
// saw EOF in the middle of a frame, and a browser reported 1006.
func TestSlowReaderSeesCloseCode(t *testing.T) {
	// No heartbeat: these clients do not answer pings.
	s := startTestNode(t, Config{PingInterval: time.Hour, PongTimeout: time.Hour})
	h, err := imhelper.New(context.Background(), imhelper.Options{RedisURL: s.cfg.RedisURL})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const n = 50
	clients := make([]*rawClient, n)
	for i := range clients {
		u, err := h.PrevConnectServer(context.Background(), "slow-"+strconv.Itoa(i), "")
		if err != nil {
			t.Fatal(err)
		}
		// About 40 KB/s each, with a small receive buffer.
		clients[i] = dialSlow(t, u, 8192, 4096)
	}
	// Attached, so that every client gets every broadcast from seq 0 on.
	waitFor(t, 30*time.Second, func() error {
		for i := range n {
			if s.hub.get("slow-"+strconv.Itoa(i)) == nil {
				return fmt.Errorf("slow-%d not attached", i)
			}
		}
		return nil
	})
	results := make(chan slowResult, n)
	for i, rc := range clients {
		go func() { results <- readUntilClose("slow-"+strconv.Itoa(i), rc) }()
	}
	// Publish about 2 KB per message until every client has its answer:
	// far faster than 40 KB/s, however loaded the machine.
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		pad := strings.Repeat("p", 2000)
		for seq := 0; ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := h.SendBroadcastMessage(context.Background(), `{"seq":`+strconv.Itoa(seq)+`,"pad":"`+pad+`"}`); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var bad []string
	got4003 := 0
	bound := time.After(2 * time.Minute) // a broken build, not a margin
	for range n {
		select {
		case r := <-results:
			if r.code == wire.CloseSlowConsumer && r.err == "" {
				got4003++
				continue
			}
			bad = append(bad, fmt.Sprintf("%s: code %d, %d frames, %s", r.id, r.code, r.frames, r.err))
		case <-bound:
			bad = append(bad, "clients still reading after 2 minutes")
		}
		if len(bad) > 0 && strings.HasPrefix(bad[len(bad)-1], "clients still") {
			break
		}
	}
	close(stop)
	<-pubDone
	if len(bad) > 0 {
		if len(bad) > 5 {
			bad = append(bad[:5], "…")
		}
		t.Fatalf("%d of %d slow clients saw 4003 after whole, ordered frames; others:\n%s", got4003, n, strings.Join(bad, "\n"))
	}
	t.Logf("%d of %d slow clients saw 4003", got4003, n)
}
