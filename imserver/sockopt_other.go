//go:build !linux

package imserver

import "net"

// limitUnsent is a no-op here: the kernel's send buffer is left as it is
// (sockopt_linux.go).
func limitUnsent(net.Conn, int) {}
