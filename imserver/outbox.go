package imserver

import (
	"context"
	"log/slog"
	"time"

	"github.com/imbroker/imbroker/internal/store"
)

// outbox publishes the node messages a node sends itself (receipts for a
// sender on another node) from its own goroutine, a batch per round trip,
// so that a pub/sub worker never waits on Redis: every channel hashed to
// that worker would wait with it.
type outbox struct {
	st      store.Publisher
	metrics *metrics
	log     *slog.Logger
	timeout time.Duration
	queue   chan store.NodeMessage
}

// outboxQueue bounds the messages waiting to be published. A full queue
// drops the message and counts it (im_outbox_dropped_total): a receipt is
// advisory, and blocking would stall the worker this exists to protect.
const (
	outboxQueue = 16384
	outboxBatch = 256
)

func newOutbox(st store.Publisher, m *metrics, log *slog.Logger, timeout time.Duration) *outbox {
	return &outbox{st: st, metrics: m, log: log, timeout: timeout, queue: make(chan store.NodeMessage, outboxQueue)}
}

// push queues m without blocking.
func (o *outbox) push(m store.NodeMessage) {
	select {
	case o.queue <- m:
	default:
		o.metrics.outboxDropped.Inc()
	}
}

// run publishes until ctx ends.
func (o *outbox) run(ctx context.Context) {
	batch := make([]store.NodeMessage, 0, outboxBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-o.queue:
			batch = append(batch[:0], m)
		}
	more:
		for len(batch) < outboxBatch {
			select {
			case m := <-o.queue:
				batch = append(batch, m)
			default:
				break more
			}
		}
		cctx, cancel := context.WithTimeout(ctx, o.timeout)
		if err := o.st.PublishNodes(cctx, batch...); err != nil {
			o.metrics.redisErrs.Inc()
			o.log.Warn("failed to publish receipts", "messages", len(batch), "err", err)
		}
		cancel()
		clear(batch)
	}
}
