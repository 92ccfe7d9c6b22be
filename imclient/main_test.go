package imclient

import (
	"testing"

	"github.com/imbroker/imbroker/internal/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }
