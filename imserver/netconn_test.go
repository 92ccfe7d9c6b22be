package imserver

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// A frame written into an open batch (coder/websocket's close frame, sent
// just before it closes the socket) must reach the peer.
func TestBatchConnCloseSendsOpenBatch(t *testing.T) {
	a, b := net.Pipe()
	bc := &batchConn{Conn: a}
	got := make(chan []byte)
	go func() { all, _ := io.ReadAll(b); got <- all }()
	bc.begin()
	bc.appendText([]byte("hi"))
	if _, err := bc.Write([]byte{0x88, 0x02, 0x03, 0xe8}); err != nil { // close 1000
		t.Fatal(err)
	}
	if err := bc.Close(); err != nil {
		t.Fatal(err)
	}
	want := []byte{0x81, 0x02, 'h', 'i', 0x88, 0x02, 0x03, 0xe8}
	if all := <-got; !bytes.Equal(all, want) {
		t.Fatalf("peer read % x, want % x", all, want)
	}
}

// appendText writes RFC 6455 headers for all three payload length forms.
func TestAppendTextHeaders(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		bc := &batchConn{}
		bc.begin()
		bc.appendText(make([]byte, n))
		h := (*bc.buf)[:min(len(*bc.buf), 10)]
		var want []byte
		switch {
		case n < 126:
			want = []byte{0x81, byte(n)}
		case n < 65536:
			want = []byte{0x81, 126, byte(n >> 8), byte(n)}
		default:
			want = []byte{0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0}
		}
		if !bytes.HasPrefix(h, want) || len(*bc.buf) != len(want)+n {
			t.Errorf("n=%d: header % x, total %d", n, h, len(*bc.buf))
		}
	}
}
