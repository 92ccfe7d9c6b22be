package main

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// imhelper.SendMessage against a private redis-server with three registered
// (fake) nodes: the cost of validating, encoding, grouping receivers by owner
// and publishing once per owning node. Run with:
//
//	go test ./imbench -run '^$' -bench SendMessage -benchmem
//
// Nothing subscribes, so this is the business side's cost alone.
func BenchmarkSendMessage(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()
	rc, err := store.Dial(srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	st := store.NewRedis(rc, store.Options{})
	for i := 1; i <= 3; i++ {
		id := "n" + strconv.Itoa(i)
		info := wire.NodeInfo{ID: id, URL: "ws://127.0.0.1:1/ws", Started: time.Now().UnixMilli()}
		if _, err := st.WriteLease(ctx, info, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	h, err := imhelper.New(ctx, imhelper.Options{Redis: rc})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	payload := appendPayload(nil, 1, 1, time.Now().UnixNano(), 1, 100)
	for _, receivers := range []int{1, 10, 100} {
		to := make([]string, receivers)
		for i := range to {
			to[i] = "c" + strconv.Itoa(i)
		}
		b.Run("to="+strconv.Itoa(receivers), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := h.SendMessage(ctx, "alice", to, payload); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("to="+strconv.Itoa(receivers)+"/parallel64", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(32) // 2 cores × 32 = 64 concurrent senders
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := h.SendMessage(ctx, "alice", to, payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
