package imserver

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/internal/wire"
)

// BenchmarkConnWrite measures the socket write path (enqueue, writer
// goroutine, coder/websocket write) over a real loopback WebSocket; the peer
// reads and discards. Run with:
//
//	go test ./imserver -run '^$' -bench ConnWrite -benchmem
func BenchmarkConnWrite(b *testing.B) {
	s := &Server{cfg: Config{MaxQueueBytes: 64 << 20, WriteTimeout: 10 * time.Second}, metrics: newMetrics(), hub: newHub()}
	got := make(chan *conn, 1)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lw := &leanWriter{ResponseWriter: w}
		ws, err := websocket.Accept(lw, r, nil)
		if err != nil {
			b.Error(err)
			return
		}
		got <- &conn{srv: s, ws: ws, nc: lw.conn}
	}))
	defer hs.Close()
	ctx := context.Background()
	peer, _, err := websocket.Dial(ctx, strings.Replace(hs.URL, "http", "ws", 1), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer peer.CloseNow()
	var read atomic.Int64
	go func() {
		for {
			if _, _, err := peer.Read(ctx); err != nil {
				return
			}
			read.Add(1)
		}
	}()
	cn := <-got
	f := wire.ChannelFrame("01JD3Y5M2X8Q4R7T9V1W3Y5Z7A", "alice", "bench", 1732340000000, []byte(`{"text":"a 100-byte-ish payload for the benchmark, like the targets in issue five use"}`))
	of := outFrame{b: f}
	b.ReportAllocs()
	b.ResetTimer()
	n := int64(0)
	for b.Loop() {
		for !cn.enqueue(of) {
			b.Fatal("socket closed")
		}
		n++
		// Keep the queue short, as a reader keeping up would.
		for n-read.Load() > 256 {
			time.Sleep(10 * time.Microsecond)
		}
	}
	for read.Load() < n {
		time.Sleep(100 * time.Microsecond)
	}
}

// BenchmarkHeartbeat is one pass of the ping loop over 15,000 idle sockets
// none of which is due: the whole per-second cost of heartbeats without a
// timer per socket.
func BenchmarkHeartbeat(b *testing.B) {
	s := &Server{cfg: Config{PingInterval: time.Hour, WriteTimeout: time.Second}, metrics: newMetrics(), hub: newHub()}
	now := time.Now()
	for i := 0; i < 15000; i++ {
		s.hub.add("c"+strconv.Itoa(i), "", &conn{srv: s, lastPing: now})
	}
	b.ReportAllocs()
	for b.Loop() {
		s.heartbeat(now)
	}
}
