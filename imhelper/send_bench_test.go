package imhelper_test

import (
	"context"
	"testing"
	"time"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/testnode"
	"github.com/imbroker/imbroker/internal/wire"
)

// BenchmarkSendMessage is the cost of one SendMessage to a real
// redis-server (one PUBLISH round trip), called from one goroutine and from
// many. A subscribed node in the registry is all it needs.
//
//	go test -run '^$' -bench BenchmarkSendMessage -benchmem ./imhelper/
func BenchmarkSendMessage(b *testing.B) {
	ctx := context.Background()
	r := redistest.Start(b)
	rc, err := store.Dial(r.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	st := store.NewRedis(rc, store.Options{})
	sub, err := st.Subscribe(ctx, "n1", func(store.Message) {})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	if _, err := st.WriteLease(ctx, wire.NodeInfo{ID: "n1", URL: "ws://n1.invalid/ws"}, time.Hour); err != nil {
		b.Fatal(err)
	}
	im, err := imhelper.New(ctx, imhelper.Options{RedisURL: r.URL(), Logger: testnode.Quiet()})
	if err != nil {
		b.Fatal(err)
	}
	defer im.Close()
	if err := im.RefreshNodes(ctx); err != nil || len(im.Nodes()) != 1 {
		b.Fatalf("nodes %v %v", im.Nodes(), err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := im.SendMessage(ctx, "a", []string{"b"}, `"hi"`); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(32)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := im.SendMessage(ctx, "a", []string{"b"}, `"hi"`); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
