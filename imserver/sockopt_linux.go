package imserver

import (
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
