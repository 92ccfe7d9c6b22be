package imhelper_test

import (
	"context"
	"strconv"
	"testing"

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
	b.Cleanup(rc.Close) // after the subscription's cleanup
	registerNode(b, store.NewRedis(rc, store.Options{}), "n1", 0, func(store.Message) {})
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

// BenchmarkSendMessages is SendMessages against a real redis-server with
// three registered nodes, each subscribed: batches of n messages, each to
// its own receiver (per-user feeds), against the same messages sent one
// SendMessage at a time (batch=1 is SendMessage). ns/msg is the figure to
// compare; with history each batch is one send_kept.lua run per node.
//
//	go test -run '^$' -bench BenchmarkSendMessages -benchmem ./imhelper/
func BenchmarkSendMessages(b *testing.B) {
	ctx := context.Background()
	r := redistest.Start(b)
	rc, err := store.Dial(r.URL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(rc.Close) // after the subscriptions' cleanups
	st := store.NewRedis(rc, store.Options{})
	for _, id := range []string{"n1", "n2", "n3"} {
		registerNode(b, st, id, wire.NodeMsgVersion, func(store.Message) {})
	}
	for _, hist := range []struct {
		name string
		opt  *imhelper.HistoryOptions
	}{{"history=on", nil}, {"history=off", &imhelper.HistoryOptions{Clients: []imhelper.HistoryRule{{}}}}} {
		im, err := imhelper.New(ctx, imhelper.Options{RedisURL: r.URL(), Logger: testnode.Quiet(), History: hist.opt})
		if err != nil {
			b.Fatal(err)
		}
		defer im.Close()
		if len(im.Nodes()) != 3 {
			b.Fatalf("nodes %v", im.Nodes())
		}
		payload := []byte(`{"k":1,"s":42,"t":1732340000123456789,"r":7,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)
		for _, n := range []int{1, 16, 64} {
			msgs := make([]imhelper.Outgoing, n)
			for i := range msgs {
				msgs[i] = imhelper.Outgoing{From: "feed", To: []string{"user-" + strconv.Itoa(i)}, Payload: payload}
			}
			b.Run(hist.name+"/batch="+strconv.Itoa(n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if n == 1 {
						if _, err := im.SendMessage(ctx, msgs[0].From, msgs[0].To, payload); err != nil {
							b.Fatal(err)
						}
						continue
					}
					if _, err := im.SendMessages(ctx, msgs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/msg")
			})
		}
	}
}
