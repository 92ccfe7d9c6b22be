package imserver

import (
	"bufio"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// leanWriter hands coder/websocket a connection of our own at hijack time:
//
//   - Small bufio buffers instead of net/http's two 4 KiB ones, which
//     coder/websocket would otherwise keep for the socket's lifetime; on an
//     idle push-only socket they are most of its memory.
//   - A batchConn, so that the writer goroutine sends all the frames it took
//     from the queue with one write(2) instead of one per frame.
//
// The original reader is kept if the client already sent bytes after its
// request (they sit in its buffer).
type leanWriter struct {
	http.ResponseWriter
	conn *batchConn // set by Hijack
}

const (
	leanReadBuf  = 256 // a frame header, a pong or a small client frame
	leanWriteBuf = 256 // headers and control frames; payloads go straight to batchConn
)

func (w *leanWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("response writer cannot hijack")
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = &batchConn{Conn: nc}
	r := brw.Reader
	if r.Buffered() == 0 {
		r = bufio.NewReaderSize(w.conn, leanReadBuf)
	}
	return w.conn, bufio.NewReadWriter(r, bufio.NewWriterSize(w.conn, leanWriteBuf)), nil
}

// batchConn collects what is written between begin and end and sends it
// with one write at end; outside a batch (pongs, close frames) it writes
// through. The batch buffer comes from a pool, so an idle socket holds none.
type batchConn struct {
	net.Conn

	mu       sync.Mutex
	batching bool    // guarded by mu
	buf      *[]byte // guarded by mu; non-nil while batching
}

var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.batching {
		*b.buf = append(*b.buf, p...)
		b.mu.Unlock()
		return len(p), nil
	}
	// Held across the write so that nothing overtakes a batch being sent.
	defer b.mu.Unlock()
	return b.Conn.Write(p)
}

// Close sends what a batch holds before closing: coder/websocket writes a
// close frame (the echo of the peer's, or 1009) and closes at once, and that
// frame must not die in our buffer. If a write is in progress (possibly
// stuck: the watchdog aborts such sockets) it closes at once instead.
func (b *batchConn) Close() error {
	if b.mu.TryLock() {
		if b.batching && len(*b.buf) > 0 {
			_ = b.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = b.Conn.Write(*b.buf)
			*b.buf = (*b.buf)[:0]
		}
		b.mu.Unlock()
	}
	return b.Conn.Close()
}

// appendText adds one unmasked, final text frame carrying p to the open
// batch: the frame header is 2 to 10 bytes (RFC 6455 §5.2). The writer uses
// it instead of coder/websocket's Write for data frames, which costs a
// message writer reset, two locks and a flush per frame; control frames
// (ping, pong, close) still come from the library, each as one Write of a
// whole frame, so frames never interleave.
func (b *batchConn) appendText(p []byte) {
	b.mu.Lock()
	buf := *b.buf
	n := len(p)
	switch {
	case n < 126:
		buf = append(buf, 0x81, byte(n))
	case n < 1<<16:
		buf = append(buf, 0x81, 126, byte(n>>8), byte(n))
	default:
		buf = append(buf, 0x81, 127)
		buf = binary.BigEndian.AppendUint64(buf, uint64(n))
	}
	*b.buf = append(buf, p...)
	b.mu.Unlock()
}

func (b *batchConn) begin() {
	b.mu.Lock()
	b.batching = true
	b.buf = batchBufs.Get().(*[]byte)
	b.mu.Unlock()
}

// end sends the batch. An error means the socket is broken.
func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	buf := b.buf
	b.buf = nil
	var err error
	if len(*buf) > 0 {
		_, err = b.Conn.Write(*buf)
	}
	if cap(*buf) <= 64<<10 {
		*buf = (*buf)[:0]
		batchBufs.Put(buf)
	}
	return err
}
