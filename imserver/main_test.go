package imserver

import (
	"testing"

	"github.com/imbroker/imbroker/internal/leakcheck"
)

// Every test stops what it started: nodes (Shutdown waits for every
// goroutine the node started), imhelper clients and WebSocket clients.
func TestMain(m *testing.M) { leakcheck.Main(m) }
