//go:build !linux

package imserver

import (
	"errors"
	"net"
)

// limitUnsent is a no-op here: the kernel's send buffer is left as it is
// (sockopt_linux.go).
func limitUnsent(net.Conn, int) {}

// rawWriter is absent here: every frame goes through the socket's writer
// goroutine (sockopt_linux.go).
type rawWriter struct{}

func newRawWriter(net.Conn) *rawWriter { return nil }

func (*rawWriter) tryWrite([]byte) (int, error) { return 0, errors.ErrUnsupported }
