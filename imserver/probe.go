package imserver

import (
	"context"
	"time"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// probeLoop publishes a probe to the node's own channel every
// ProbeInterval (and, on a Cluster, one to each master: Subscription.Probe); if probes stop arriving on a subscription that looks
// alive (Redis dropped it behind our back), it makes the subscriber
// reconnect.
func (s *Server) probeLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.ProbeInterval)
	defer t.Stop()
	msg := wire.EncodeNodeMsg(wire.NodeMsg{Kind: wire.KindProbe, Nonce: s.cfg.NodeID})
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !s.sub.connected.Load() {
			continue
		}
		if !s.sub.healthy() {
			s.sub.reconnect()
			continue
		}
		cctx, cancel := s.redisCtx()
		_ = s.st.PublishNodes(cctx, store.NodeMessage{Node: s.cfg.NodeID, Msg: msg})
		// On a Cluster the node channel is on one master; the
		// subscription probes its connections to the others itself and
		// fails (its Done) when one stops delivering.
		if cur := s.sub.current(); cur != nil {
			_ = cur.Probe(cctx)
		}
		cancel()
	}
}
