package imserver

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// Frames written straight from the caller (sockWriter.writeNow) and those
// the kernel did not take at once, which go on through the writer
// goroutine, reach the peer whole and in order: the peer stops reading
// until the send buffer is full, so the switch happens mid-stream, often
// mid-frame.
func TestWriteNowThenWriter(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{cfg: Config{MaxQueueBytes: 64 << 20}, metrics: newMetrics(), hub: newHub()}
	w := s.newSockWriter(nc)
	if w.raw == nil {
		t.Fatal("a plain TCP connection has no raw writer")
	}
	broken := make(chan struct{})
	w.onSlow = func() { t.Error("reported slow") }
	w.onBroken = func() { close(broken) }
	w.start()
	defer w.Close()

	const frames = 4000 // 4 MB: more than loopback's send and receive buffers
	payload := func(i int) []byte { return fmt.Appendf(nil, "%06d:%01000d", i, i) }
	queuedOnce := false
	for i := range frames {
		if !w.enqueue(outFrame{b: payload(i)}) {
			t.Fatalf("frame %d refused", i)
		}
		w.mu.Lock()
		queuedOnce = queuedOnce || w.queued > 0
		w.mu.Unlock()
	}
	if !queuedOnce {
		t.Fatal("the kernel took 4 MB without the peer reading: the writer goroutine was never needed")
	}
	_ = peer.SetReadDeadline(time.Now().Add(time.Minute))
	br := bufio.NewReader(peer)
	for i := range frames {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if h[0] != 0x81 {
			t.Fatalf("frame %d: first byte %#x, want a final text frame", i, h[0])
		}
		n := int(h[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			if _, err := io.ReadFull(br, l[:]); err != nil {
				t.Fatal(err)
			}
			n = int(binary.BigEndian.Uint16(l[:]))
		case 127:
			t.Fatalf("frame %d: 64-bit length", i)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if want := payload(i); string(b) != string(want) {
			t.Fatalf("frame %d: got %.20q…, want %.20q…", i, b, want)
		}
	}
	select {
	case <-broken:
		t.Fatal("writer reported a broken socket")
	default:
	}
}
