package wire

import (
	"strconv"
	"testing"
	"time"
)

// Hot paths of the wire format, run with:
//
//	go test ./internal/wire -run '^$' -bench . -benchmem

var benchData = []byte(`{"k":1,"s":42,"t":1732340000123456789,"r":7,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`) // 100 bytes

func BenchmarkMessageFrame(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = MessageFrame("01JD3Y5M2X8Q4R7T9V1W3Y5Z7A", "alice", nil, 1732340000000, benchData)
	}
}

func BenchmarkChannelFrame(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = ChannelFrame("01JD3Y5M2X8Q4R7T9V1W3Y5Z7A", "alice", "room-1", 1732340000000, benchData)
	}
}

func BenchmarkAppendString(b *testing.B) {
	buf := make([]byte, 0, 128)
	for _, s := range []string{"user-12345", "a longer client id with spaces and \"quotes\"", "用户-名字-一二三四五"} {
		b.Run(strconv.Itoa(len(s)), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				buf = AppendString(buf[:0], s)
			}
		})
	}
}

func nodeMsgFor(receivers int) (NodeMsg, []byte) {
	h := NodeMsg{Kind: KindSend, ID: "01JD3Y5M2X8Q4R7T9V1W3Y5Z7A"}
	for i := 0; i < receivers; i++ {
		h.To = append(h.To, "client-"+strconv.Itoa(i))
	}
	return h, MessageFrame(h.ID, "alice", nil, 1732340000000, benchData)
}

func BenchmarkEncodeNodeMsg(b *testing.B) {
	for _, n := range []int{1, 100} {
		h, f := nodeMsgFor(n)
		b.Run("to="+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = EncodeNodeMsg(h, f)
			}
		})
	}
}

func BenchmarkDecodeNodeMsg(b *testing.B) {
	for _, n := range []int{1, 100} {
		msg := EncodeNodeMsg(nodeMsgFor(n))
		b.Run("to="+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if _, _, err := DecodeNodeMsg(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// batchFor is a batch of sends messages, each to its own receiver, as
// imhelper's SendMessages writes one node's share of per-user feeds.
func batchFor(sends int) []BatchSend {
	out := make([]BatchSend, sends)
	for i := range out {
		id := NewID(time.UnixMilli(1732340000000))
		out[i] = BatchSend{Header: NodeMsg{Kind: KindSend, To: []string{"client-" + strconv.Itoa(i)}, ID: id},
			Frame: MessageFrame(id, "alice", nil, 1732340000000, benchData)}
	}
	return out
}

// BenchmarkEncodeBatch is the batch encoder imhelper runs without history
// (with history send_kept.lua writes the batch); ns/send against
// BenchmarkEncodeNodeMsg/to=1 is a carried send's cost.
func BenchmarkEncodeBatch(b *testing.B) {
	for _, n := range []int{1, 16, 256} {
		sends := batchFor(n)
		b.Run("sends="+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = EncodeBatch(NodeMsgVersion, sends)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/send")
		})
	}
}

// BenchmarkDecodeBatch is what a node does with a batch before delivering
// it: the frames stay in the message, each send's header is parsed.
func BenchmarkDecodeBatch(b *testing.B) {
	for _, n := range []int{1, 16, 256} {
		msg := EncodeBatch(NodeMsgVersion, batchFor(n))
		b.Run("sends="+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if _, _, err := DecodeNodeMsg(msg); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/send")
		})
	}
}

func BenchmarkOwner(b *testing.B) {
	for _, n := range []int{1, 3, 10} {
		var nodes []string
		for i := 0; i < n; i++ {
			nodes = append(nodes, "node-"+strconv.Itoa(i))
		}
		b.Run("nodes="+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = Owner("client-12345", nodes)
			}
		})
	}
}

func BenchmarkNewID(b *testing.B) {
	b.ReportAllocs()
	now := time.Now()
	for b.Loop() {
		_ = NewID(now)
	}
}

func BenchmarkValidFrame(b *testing.B) {
	f := ChannelFrame("01JD3Y5M2X8Q4R7T9V1W3Y5Z7A", "alice", "room-1", 1732340000000, benchData)
	b.ReportAllocs()
	b.SetBytes(int64(len(f)))
	for b.Loop() {
		_ = ValidFrame(f)
	}
}
