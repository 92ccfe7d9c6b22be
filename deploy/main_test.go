// Package deploy holds no code, only the checks of what deploy/ and
// docker-compose.yml ship: the alert rules (promtool), the Grafana
// dashboard, the Kubernetes manifests and the compose file, against the
// Dockerfiles, the node's configuration and a live node. There is no
// Docker engine or Kubernetes cluster on the test machines; docs/deploy.md
// says what these checks cover and what they do not.
package deploy

import (
	"testing"

	"github.com/imbroker/imbroker/internal/leakcheck"
)

// The live-node tests stop their node, helper and sockets.
func TestMain(m *testing.M) { leakcheck.Main(m) }
