package imserver

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imbroker/imbroker/internal/wire"
)

// outFrame is one frame queued for a socket. The bytes are shared by every
// socket the frame goes to and never modified.
type outFrame struct {
	b    []byte
	ts   int64 // publish time in unix ms from the frame, 0 if unknown
	ctrl bool  // b is a whole WebSocket frame from coder/websocket; else a text payload
}

// sockWriter is the one owner of a socket's write side, as in nats-server's
// websocket.go: every byte the socket sends after the handshake leaves
// through its queue, in order, and one write(2) carries all the frames the
// writer took from it.
//
//   - Data frames come from the hub (enqueue); the writer frames them itself
//     (wire.AppendFrameHeader) instead of going through coder/websocket's
//     Write, which costs a message writer reset, two locks and a flush per
//     frame.
//   - Control frames (pong, ping, close) are written by coder/websocket,
//     which reaches us through Write, one whole frame per call (its buffered
//     writer holds 256 bytes and is flushed after each frame; a control
//     frame is at most 127). They are queued like data.
//   - Once a close frame is queued nothing more is accepted, so no data
//     frame can follow a close frame (RFC 6455 §5.5.1). Data queued before
//     it still goes out first: a drain or a kick does not lose what was
//     accepted; a slow consumer's backlog is dropped instead (stopData),
//     the rest of the batch being written included.
//   - A batch is written writeChunk bytes at a time, and the kernel holds
//     at most sockUnsent unsent bytes (limitUnsent), so that a slow
//     consumer's close frame follows tens of kilobytes, not the megabytes
//     a backlog and an autotuned send buffer would put ahead of it.
//
// A data frame for an idle socket (nothing queued, no write running) is
// written at once from the goroutine that enqueues it, if the kernel takes
// it whole without waiting (rawWriter): a fan-out to 10,000 sockets then
// costs 10,000 writes and no goroutine. A writer goroutine is started only
// for what the kernel did not take, or for frames queued meanwhile, and
// exists only while the queue is non-empty, so an idle socket costs no
// goroutine here.
type sockWriter struct {
	net.Conn
	raw      *rawWriter    // nil: every frame goes through the writer goroutine
	behind   *atomic.Int32 // non-zero: the node is behind, queue so that frames batch (backlog.behind)
	metrics  *metrics
	maxQueue int
	spawn    func(func()) bool // starts a goroutine the server tracks
	onSlow   func()            // the queue bound was passed
	onBroken func()            // a write failed

	mu          sync.Mutex
	live        bool          // the handshake is done; guarded by mu
	queue       []outFrame    // guarded by mu
	spare       []outFrame    // the writer's last batch, reused; guarded by mu
	queued      int           // bytes queued or being written; guarded by mu
	writing     bool          // a writer goroutine runs; guarded by mu
	dataStopped bool          // no more data frames; guarded by mu
	closeQueued bool          // a close frame is queued: nothing after it; guarded by mu
	closed      bool          // Close was called; guarded by mu
	idle        chan struct{} // closed when the writer exits, while Close waits; guarded by mu

	// bursts counts the callers writing many frames in a row (a fill's
	// replay): while it is not 0, frames go through the writer goroutine,
	// which sends what accumulated with one write(2), instead of one
	// write each from the caller.
	bursts atomic.Int32

	// cut is set with dataStopped when the backlog is dropped: the writer
	// then drops the data frames of its batch it has not written yet.
	cut atomic.Bool

	// writeSince is when the current write started (unix nanos), 0
	// while idle. The heartbeat drops a socket whose write takes longer
	// than WriteTimeout; a deadline per write would cost a timer
	// registration per delivered frame.
	writeSince atomic.Int64
}

// closeFlush bounds how long Close waits for queued frames to be written.
const closeFlush = time.Second

// writeChunk bounds one write(2). Between writes the writer can drop a slow
// consumer's remaining data, so at most this much of it (or one larger
// frame) is still written ahead of the close frame. A reader keeping up
// leaves batches smaller than this.
const writeChunk = 16 << 10

// sockUnsent is the socket's TCP_NOTSENT_LOWAT (limitUnsent): how much the
// kernel holds that the peer's window did not yet take.
const sockUnsent = 16 << 10

var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// start ends the handshake: from now on coder/websocket's writes are queued.
func (w *sockWriter) start() {
	w.mu.Lock()
	w.live = true
	w.mu.Unlock()
}

// enqueue queues a data frame without blocking; false if the socket no
// longer takes data. A socket whose queue would pass maxQueue is reported
// slow.
func (w *sockWriter) enqueue(f outFrame) bool {
	w.mu.Lock()
	if w.dataStopped || w.closeQueued || w.closed {
		w.mu.Unlock()
		return false
	}
	// An empty queue takes any frame, so one frame larger than the bound is
	// not mistaken for a slow reader.
	if w.queued > 0 && w.queued+len(f.b) > w.maxQueue {
		w.mu.Unlock()
		w.metrics.dropped.Inc()
		w.onSlow()
		return false
	}
	if !w.writing && len(w.queue) == 0 && w.raw != nil && w.bursts.Load() == 0 && w.behind.Load() == 0 {
		w.writing = true // ours until writeNow is done: others queue behind
		w.queued += len(f.b)
		w.mu.Unlock()
		w.writeNow(f)
		return true
	}
	start := w.pushLocked(f)
	w.mu.Unlock()
	if start {
		w.startWriter()
	}
	return true
}

// enqueueRun queues frames of one stream that arrived together (a run of
// messages the node was behind on) like enqueue, but an idle socket gets
// them all with one write(2): at saturation that is what keeps a fan-out's
// deliveries per second up.
func (w *sockWriter) enqueueRun(fs []outFrame) bool {
	total := 0
	for _, f := range fs {
		total += len(f.b)
	}
	w.mu.Lock()
	if w.dataStopped || w.closeQueued || w.closed {
		w.mu.Unlock()
		return false
	}
	if w.queued > 0 && w.queued+total > w.maxQueue {
		w.mu.Unlock()
		w.metrics.dropped.Add(float64(len(fs)))
		w.onSlow()
		return false
	}
	if !w.writing && len(w.queue) == 0 && w.raw != nil && w.bursts.Load() == 0 {
		w.writing = true
		w.queued += total
		w.mu.Unlock()
		w.writeNow(fs...)
		return true
	}
	start := false
	for _, f := range fs {
		start = w.pushLocked(f) || start
	}
	w.mu.Unlock()
	if start {
		w.startWriter()
	}
	return true
}

// writeNow writes frames from the caller's goroutine without waiting; the
// caller set writing and counted them in queued. What the kernel did not
// take (the rest of a frame begun, and the frames after it) goes to the
// head of the queue, and a writer goroutine is started for it and for
// anything queued meanwhile.
func (w *sockWriter) writeNow(fs ...outFrame) {
	bp := batchBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	total := 0
	for _, f := range fs {
		buf = wire.AppendFrameHeader(buf, wire.OpText, len(f.b))
		buf = append(buf, f.b...)
		total += len(f.b)
	}
	n, err := w.raw.tryWrite(buf)
	// Frames wholly written, and the rest of the one cut short.
	done, off := 0, 0
	var rest []byte
	if err == nil {
		for _, f := range fs {
			end := off + frameHeaderLen(len(f.b)) + len(f.b)
			if end > n {
				if off < n {
					rest = append([]byte(nil), buf[n:end]...)
					done++ // begun: it goes out whole, as the rest
				}
				break
			}
			off = end
			done++
		}
	}
	if cap(buf) <= 64<<10 {
		*bp = buf[:0]
		batchBufs.Put(bp)
	}
	for _, f := range fs[:done] {
		w.metrics.observeDelivery(f.ts)
	}
	w.mu.Lock()
	w.queued -= total
	if err != nil {
		w.brokenLocked()
		return
	}
	// Put back, ahead of what was queued meanwhile: the rest of a frame
	// begun, written as it is and kept through a slow consumer's cut
	// (stopData keeps control frames), since the stream would be corrupt
	// without it; then the frames not begun, as data.
	var head []outFrame
	if rest != nil {
		head = append(head, outFrame{b: rest, ctrl: true})
		w.queued += len(rest)
	}
	for _, f := range fs[done:] {
		head = append(head, f)
		w.queued += len(f.b)
	}
	if len(head) > 0 {
		w.queue = append(head, w.queue...)
	}
	if len(w.queue) == 0 {
		w.exitLocked()
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	w.startWriter() // writing stays set: the writer goroutine owns it now
}

// frameHeaderLen is the length of the header wire.AppendFrameHeader
// writes for a payload of n bytes.
func frameHeaderLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n < 1<<16:
		return 4
	default:
		return 10
	}
}

// pushLocked appends f and reports whether a writer must be started.
func (w *sockWriter) pushLocked(f outFrame) bool {
	w.queue = append(w.queue, f)
	w.queued += len(f.b)
	start := !w.writing
	w.writing = true
	return start
}

func (w *sockWriter) startWriter() {
	if !w.spawn(w.writeLoop) {
		w.mu.Lock()
		w.writing = false
		w.mu.Unlock()
	}
}

// stopData makes the socket take no more data frames; with drop, the
// frames already queued are dropped too (control frames stay).
func (w *sockWriter) stopData(drop bool) {
	w.mu.Lock()
	w.dataStopped = true
	if drop {
		w.cut.Store(true)
		kept := w.queue[:0]
		for _, f := range w.queue {
			if f.ctrl {
				kept = append(kept, f)
			} else {
				w.queued -= len(f.b)
			}
		}
		clear(w.queue[len(kept):])
		w.queue = kept
	}
	w.mu.Unlock()
}

// Write takes what coder/websocket writes: before the handshake is done,
// the HTTP response, written through; after it, one whole control frame per
// call, queued.
func (w *sockWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	if !w.live {
		w.mu.Unlock()
		return w.Conn.Write(p)
	}
	if w.closeQueued || w.closed {
		w.mu.Unlock()
		return 0, net.ErrClosed
	}
	if wire.FrameOpcode(p) == wire.OpClose {
		w.closeQueued = true
	}
	start := w.pushLocked(outFrame{b: append([]byte(nil), p...), ctrl: true})
	w.mu.Unlock()
	if start {
		w.startWriter()
	}
	return len(p), nil
}

// writeLoop writes batches until the queue is empty.
func (w *sockWriter) writeLoop() {
	for {
		w.mu.Lock()
		batch := w.queue
		if len(batch) == 0 {
			w.exitLocked()
			w.mu.Unlock()
			return
		}
		w.queue = w.spare[:0]
		w.mu.Unlock()

		n, err := w.writeBatch(batch)
		clear(batch) // drop references to shared frames
		w.mu.Lock()
		w.queued -= n
		w.spare = batch[:0]
		if err != nil {
			w.brokenLocked()
			return
		}
		w.mu.Unlock()
	}
}

// brokenLocked ends the writer after a failed write: nothing more is
// queued or written. It unlocks mu and reports the socket broken.
func (w *sockWriter) brokenLocked() {
	w.dataStopped, w.closeQueued = true, true
	w.queue = nil
	w.exitLocked()
	w.mu.Unlock()
	w.onBroken()
}

func (w *sockWriter) exitLocked() {
	w.writing = false
	if w.idle != nil {
		close(w.idle)
		w.idle = nil
	}
}

// writeBatch sends frames, whole, with one write per writeChunk bytes, and
// returns their queued size. Once the backlog is cut (stopData), the data
// frames not yet written are dropped; control frames still go.
func (w *sockWriter) writeBatch(batch []outFrame) (int, error) {
	bp := batchBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	n := 0
	cut := w.cut.Load()
	first := 0 // batch[first:] is not written yet
	var err error
	for i, f := range batch {
		n += len(f.b)
		if !f.ctrl {
			if cut {
				continue
			}
			buf = wire.AppendFrameHeader(buf, wire.OpText, len(f.b))
		}
		buf = append(buf, f.b...)
		if len(buf) < writeChunk && i < len(batch)-1 {
			continue
		}
		if err = w.write(buf); err != nil {
			for _, f := range batch[i+1:] {
				n += len(f.b)
			}
			break
		}
		if !cut {
			for _, f := range batch[first : i+1] {
				if !f.ctrl {
					w.metrics.observeDelivery(f.ts)
				}
			}
		}
		buf, first = buf[:0], i+1
		cut = w.cut.Load()
	}
	if len(buf) > 0 && err == nil { // only control frames after a cut
		err = w.write(buf)
	}
	if cap(buf) <= 64<<10 {
		*bp = buf[:0]
		batchBufs.Put(bp)
	}
	return n, err
}

// write is one write(2) of whole frames, timed for the heartbeat's stuck
// check.
func (w *sockWriter) write(b []byte) error {
	w.writeSince.Store(time.Now().UnixNano())
	_, err := w.Conn.Write(b)
	w.writeSince.Store(0)
	return err
}

// Close is how coder/websocket ends the connection, right after it queued
// its close frame (or gave up on the peer). The queue is written first,
// within closeFlush, so that the close frame is not lost in it.
func (w *sockWriter) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	if w.writing {
		idle := make(chan struct{})
		w.idle = idle
		w.mu.Unlock()
		_ = w.Conn.SetWriteDeadline(time.Now().Add(closeFlush))
		<-idle
		w.mu.Lock()
	}
	batch := w.queue
	w.queue = nil
	w.mu.Unlock()
	if len(batch) > 0 {
		_ = w.Conn.SetWriteDeadline(time.Now().Add(closeFlush))
		_, _ = w.writeBatch(batch)
	}
	return w.Conn.Close()
}

// closeTCP closes the TCP connection at once, under coder/websocket and any
// write in progress.
func (w *sockWriter) closeTCP() { _ = w.Conn.Close() }

// writeStuck reports a batch write running for longer than timeout.
func (w *sockWriter) writeStuck(now time.Time, timeout time.Duration) bool {
	since := w.writeSince.Load()
	return since != 0 && now.UnixNano()-since > int64(timeout)
}

// leanWriter hands coder/websocket a connection of our own at hijack time:
// a sockWriter, and small bufio buffers instead of net/http's two 4 KiB
// ones, which coder/websocket would otherwise keep for the socket's
// lifetime; on an idle push-only socket they are most of its memory. The
// original reader is kept if the client already sent bytes after its
// request (they sit in its buffer).
type leanWriter struct {
	http.ResponseWriter
	newWriter func(net.Conn) *sockWriter
	w         *sockWriter // set by Hijack
}

const (
	leanReadBuf  = 256 // a frame header, a pong or a small client frame
	leanWriteBuf = 256 // one control frame (at most 127 bytes) at a time
)

func (lw *leanWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := lw.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("response writer cannot hijack")
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	lw.w = lw.newWriter(nc)
	r := brw.Reader
	if r.Buffered() == 0 {
		r = bufio.NewReaderSize(nc, leanReadBuf)
	}
	return lw.w, bufio.NewReadWriter(r, bufio.NewWriterSize(lw.w, leanWriteBuf)), nil
}
