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

// BenchmarkConnWrite measures a socket's write path over a real loopback
// WebSocket whose peer reads and discards, for the two ways of owning the
// write side (docs/architecture.md, "One writer per socket"):
//
//   - own: the node's sockWriter frames data itself and sends everything
//     queued with one write(2);
//   - library: every frame through coder/websocket's Write on the plain
//     hijacked connection (what handing all writes to the library costs).
//
// Run with:
//
//	go test ./imserver -run '^$' -bench ConnWrite -benchmem
func BenchmarkConnWrite(b *testing.B) {
	f := wire.ChannelFrame("01JD3Y5M2X8Q4R7T9V1W3Y5Z7A", "alice", "bench", 1732340000000, []byte(`{"text":"a 100-byte-ish payload for the benchmark, like the targets in issue five use"}`))
	s := &Server{cfg: Config{MaxQueueBytes: 64 << 20, WriteTimeout: 10 * time.Second}, metrics: newMetrics(), hub: newHub()}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	defer s.stopGoroutines()
	defer s.cancel()
	for _, mode := range []string{"own", "library"} {
		b.Run(mode, func(b *testing.B) {
			got := make(chan *conn, 1)
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if mode == "library" {
					ws, err := websocket.Accept(w, r, nil)
					if err != nil {
						b.Error(err)
						return
					}
					got <- &conn{srv: s, ws: ws}
					return
				}
				lw := &leanWriter{ResponseWriter: w, newWriter: s.newSockWriter}
				ws, err := websocket.Accept(lw, r, nil)
				if err != nil {
					b.Error(err)
					return
				}
				got <- s.newConn(ws, lw.w)
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
			defer cn.ws.CloseNow()
			of := outFrame{b: f}
			b.ReportAllocs()
			b.ResetTimer()
			n := int64(0)
			for b.Loop() {
				if mode == "library" {
					if err := cn.ws.Write(ctx, websocket.MessageText, f); err != nil {
						b.Fatal(err)
					}
				} else if !cn.enqueue(of) {
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
		})
	}
}

// BenchmarkHeartbeat is one pass of the ping loop over 15,000 idle sockets
// none of which is due: the whole per-second cost of heartbeats without a
// timer per socket.
func BenchmarkHeartbeat(b *testing.B) {
	s := &Server{cfg: Config{PingInterval: time.Hour, WriteTimeout: time.Second}, metrics: newMetrics(), hub: newHub()}
	now := time.Now()
	for i := 0; i < 15000; i++ {
		s.hub.add("c"+strconv.Itoa(i), "", &conn{srv: s, lastPing: now, w: &sockWriter{}})
	}
	b.ReportAllocs()
	for b.Loop() {
		s.heartbeat(now)
	}
}

// BenchmarkFanOut sends one channel frame to every member of a channel of
// real loopback WebSockets whose peers read and discard, the whole node
// path (hub.sendTopic, the writers, write(2)); ns/delivery is per socket.
//
//   - inline: today's path, each frame written from the fan-out
//     (sockWriter.writeNow) across the cores (fanOut);
//   - goroutine: every socket's frame through a writer goroutine started
//     for it (the path before issue 11: no rawWriter).
//
// Run with:
//
//	go test ./imserver -run '^$' -bench FanOut -benchmem
func BenchmarkFanOut(b *testing.B) {
	const members = 1000
	f := wire.ChannelFrame("01JD3Y5M2X8Q4R7T9V1W3Y5Z7A", "alice", "bench", 1732340000000, []byte(`{"text":"a 100-byte-ish payload for the benchmark, like the targets in issue five use"}`))
	for _, mode := range []string{"inline", "goroutine"} {
		b.Run(mode, func(b *testing.B) {
			s := &Server{cfg: Config{MaxQueueBytes: 64 << 20, WriteTimeout: 10 * time.Second}, metrics: newMetrics(), hub: newHub()}
			s.ctx, s.cancel = context.WithCancel(context.Background())
			defer s.stopGoroutines()
			defer s.cancel()
			got := make(chan *conn, members)
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				lw := &leanWriter{ResponseWriter: w, newWriter: s.newSockWriter}
				ws, err := websocket.Accept(lw, r, nil)
				if err != nil {
					b.Error(err)
					return
				}
				if mode == "goroutine" {
					lw.w.raw = nil
				}
				cn := s.newConn(ws, lw.w)
				cn.hist.holding.Store(false)
				got <- cn
			}))
			defer hs.Close()
			ctx := context.Background()
			var read atomic.Int64
			for i := range members {
				peer, _, err := websocket.Dial(ctx, strings.Replace(hs.URL, "http", "ws", 1), nil)
				if err != nil {
					b.Fatal(err)
				}
				defer peer.CloseNow()
				go func() {
					for {
						if _, _, err := peer.Read(ctx); err != nil {
							return
						}
						read.Add(1)
					}
				}()
				cn := <-got
				defer cn.ws.CloseNow()
				c, _ := s.hub.add("m"+strconv.Itoa(i), "", cn)
				s.hub.join(c, []string{"bench"})
			}
			of := outFrame{b: f}
			b.ReportAllocs()
			b.ResetTimer()
			n := int64(0)
			for b.Loop() {
				if got := s.hub.sendTopic("bench", wire.Position{}, of); got != members {
					b.Fatalf("sent to %d of %d", got, members)
				}
				n += members
				for read.Load() < n { // one message in flight, as at a low rate
					time.Sleep(20 * time.Microsecond)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/members, "ns/delivery")
		})
	}
}
