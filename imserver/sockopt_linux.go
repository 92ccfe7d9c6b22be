package imserver

import (
	"crypto/tls"
	"net"
	"syscall"
)

// tcpNotsentLowat is TCP_NOTSENT_LOWAT from linux/tcp.h (Linux 3.12+),
// which package syscall does not name.
const tcpNotsentLowat = 25

// limitUnsent caps the bytes a socket's kernel send queue holds beyond
// what the peer's receive window already took (TCP_NOTSENT_LOWAT). Without
// it the kernel grows the send buffer of a slowly reading peer to 4 MiB
// (net.ipv4.tcp_wmem) and fills it: a close frame written then reaches the
// peer only after megabytes it reads slowly, and a blocked write wakes
// only after a third of that has drained. Data in flight, what throughput
// over a long path needs, is not limited. Errors are ignored: the socket
// then keeps the kernel's default.
func limitUnsent(nc net.Conn, n int) {
	for {
		switch c := nc.(type) {
		case syscall.Conn:
			rc, err := c.SyscallConn()
			if err != nil {
				return
			}
			_ = rc.Control(func(fd uintptr) {
				_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotsentLowat, n)
			})
			return
		case interface{ NetConn() net.Conn }: // *tls.Conn, guardedConn
			nc = c.NetConn()
		default:
			return
		}
	}
}

// rawWriter writes to a socket's descriptor without ever waiting: what the
// kernel does not take at once is left to the caller. It lets a fan-out
// write a frame from the goroutine that routes it, instead of starting a
// writer goroutine per socket per message (sockWriter.enqueue). One write
// runs at a time (the sockWriter's writing flag), so the state of the call
// lives here and the callback is bound once: a closure per write would be
// an allocation per delivered frame.
type rawWriter struct {
	rc    syscall.RawConn
	write func(fd uintptr) bool // r.writeFD
	b     []byte                // being written
	n     int                   // of b written
	err   error
}

// newRawWriter returns nc's raw writer, or nil where bytes written to the
// descriptor would not be the socket's bytes (TLS) or there is none.
func newRawWriter(nc net.Conn) *rawWriter {
	for {
		switch c := nc.(type) {
		case syscall.Conn:
			rc, err := c.SyscallConn()
			if err != nil {
				return nil
			}
			r := &rawWriter{rc: rc}
			r.write = r.writeFD
			return r
		case *tls.Conn:
			return nil
		case interface{ NetConn() net.Conn }: // guardedConn
			nc = c.NetConn()
		default:
			return nil
		}
	}
}

// tryWrite writes what the kernel takes of b now and returns how much
// that was; a full send buffer is not an error.
func (r *rawWriter) tryWrite(b []byte) (int, error) {
	r.b, r.n, r.err = b, 0, nil
	err := r.rc.Write(r.write)
	n, werr := r.n, r.err
	r.b, r.err = nil, nil
	if err != nil { // the descriptor is closed
		return n, err
	}
	return n, werr
}

// writeFD is tryWrite's callback: it returns true (done) whether or not
// everything was written, so that RawConn.Write never waits.
func (r *rawWriter) writeFD(fd uintptr) bool {
	for r.n < len(r.b) {
		m, e := syscall.Write(int(fd), r.b[r.n:])
		if m > 0 {
			r.n += m
		}
		switch {
		case e == syscall.EINTR:
			continue
		case e == syscall.EAGAIN:
			return true
		case e != nil:
			r.err = e
			return true
		case m <= 0:
			return true
		}
	}
	return true
}
