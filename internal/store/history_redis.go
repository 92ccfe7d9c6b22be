package store

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// Stream names one history stream: a client's personal stream (Client set)
// or a channel's (Channel set).
type Stream struct {
	Client, Channel string
}

// Keep is how a stream keeps history: at most Size messages, each for TTL.
// Size 0 keeps nothing: the message is only published, at most once.
type Keep struct {
	Size int
	TTL  time.Duration
}

// On reports whether k keeps anything.
func (k Keep) On() bool { return k.Size > 0 && k.TTL > 0 }

// KeptNodeMessage is a send for the receivers one node owns, whose copies
// are kept in the receivers' (and the echo's sender's) personal streams.
type KeptNodeMessage struct {
	Node string
	// Header is the node message header; its To (and Echo) name the
	// streams. Frame is the message frame, EchoFrame the sender's copy
	// (nil without Echo).
	Header           wire.NodeMsg
	Frame, EchoFrame []byte
	// Keep has one entry per To, then one for the echo if there is one.
	Keep []Keep
}

// KeptBatch is one node message of kept sends for one node: a batch
// (wire.KindBatch) carrying Sends in order, or, with Version 0, the one
// send in Sends published as a send node message of its own. Either way it
// is one script run and one PUBLISH.
type KeptBatch struct {
	Node string
	// Version of the batch (as for wire.EncodeBatch, at least
	// wire.BatchVersion); 0 for a send on its own.
	Version int
	// Sends, in order; their Node is not read.
	Sends []KeptNodeMessage
}

// KeptResult is what one KeptBatch's script did: per send, the positions
// of its slots (Keep order; zero where nothing is kept), or its error. An
// error that is ErrRedisFull means Redis refused the appends: nothing of
// the batch was kept or published. After any other error (a timeout, a
// broken connection) the batch may or may not have been published.
type KeptResult struct {
	Pos [][]wire.Position
	Err error
}

// HistoryEntry is one kept message: its offset and frame (without the
// position), and when it expires (unix ms, Redis clock).
type HistoryEntry struct {
	Offset  uint64
	Frame   []byte
	Expires int64
}

// HistoryRead is what ReadHistory found in one stream.
type HistoryRead struct {
	// Top is the stream's current position; Now the Redis clock (unix ms).
	Top wire.Position
	Now int64
	// Entries follow the requested offset, oldest first; empty if the
	// epoch differs, nothing was appended, or more than the limit was.
	Entries []HistoryEntry
}

// HistoryRequest asks for what a stream kept after After (its offset; the
// epoch is the caller's to compare), at most Limit entries: none if more
// than Limit follow, unless Partial (then the first Limit).
type HistoryRequest struct {
	Stream  Stream
	After   uint64
	Limit   int
	Partial bool
}

// History keeps bounded windows of messages per stream (history_redis.go),
// and publishes what it keeps in the same atomic step.
type History interface {
	// PublishKept appends and publishes each node message (one script per
	// message, all in one round trip) and returns, per message, the
	// positions of its slots (Keep order; zero where nothing is kept).
	PublishKept(ctx context.Context, msgs ...KeptNodeMessage) ([][]wire.Position, error)
	// PublishKeptBatches appends and publishes each batch, one script run
	// per batch, all in one round trip and in order, and returns each
	// batch's outcome.
	PublishKeptBatches(ctx context.Context, batches ...KeptBatch) []KeptResult
	// PublishChannelKept appends frame to ch's stream and publishes it with
	// its position spliced in.
	PublishChannelKept(ctx context.Context, ch string, frame []byte, k Keep) (wire.Position, error)
	// Positions returns each stream's current position, starting an epoch
	// for a stream that has none.
	Positions(ctx context.Context, streams ...Stream) ([]wire.Position, error)
	// ReadHistory reads each request's stream (one round trip).
	ReadHistory(ctx context.Context, reqs ...HistoryRequest) ([]HistoryRead, error)
}

var _ History = (*Redis)(nil)

// metaTTL is how long a stream's epoch and offset outlive its last append
// or read: a client that comes back within it is told exactly what it
// missed (or recovered:false if the window did not hold it); after it, the
// stream starts a new epoch, which also says recovered:false.
const metaTTL = 24 * time.Hour

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

// PublishKept implements History: each message is a KeptBatch of one
// send, published on its own.
func (r *Redis) PublishKept(ctx context.Context, msgs ...KeptNodeMessage) ([][]wire.Position, error) {
	batches := make([]KeptBatch, len(msgs))
	for i := range msgs {
		batches[i] = KeptBatch{Node: msgs[i].Node, Sends: msgs[i : i+1]}
	}
	out := make([][]wire.Position, len(msgs))
	for i, res := range r.PublishKeptBatches(ctx, batches...) {
		if res.Err != nil {
			return out, res.Err
		}
		out[i] = res.Pos[0]
	}
	return out, nil
}

// PublishKeptBatches implements History with send_kept.lua.
func (r *Redis) PublishKeptBatches(ctx context.Context, batches ...KeptBatch) []KeptResult {
	if r.cluster {
		return r.publishKeptCluster(ctx, batches)
	}
	execs := make([]rueidis.LuaExec, len(batches))
	for i := range batches {
		execs[i] = r.keptExec(&batches[i])
	}
	out := make([]KeptResult, len(batches))
	for i, res := range r.sendKept.execMulti(ctx, r.rc, execs...) {
		arr, err := res.AsStrSlice()
		if err != nil {
			out[i].Err = full(err)
			continue
		}
		out[i].Pos, out[i].Err = splitPositions(arr, batches[i].Sends)
	}
	return out
}

// keptExec is send_kept.lua's KEYS and ARGV for b.
func (r *Redis) keptExec(b *KeptBatch) rueidis.LuaExec {
	head := ""
	if b.Version > 0 {
		head = string(wire.AppendBatchHead(nil, b.Version))
	}
	n := 4
	for i := range b.Sends {
		n += 4 + 2*len(b.Sends[i].Keep)
	}
	args := append(make([]string, 0, n), r.k.nodeChannel(b.Node), head, ms(metaTTL), wire.NewEpoch())
	var keys []string
	var hb []byte
	for i := range b.Sends {
		m := &b.Sends[i]
		h := m.Header
		h.Pos, h.EchoPos = nil, "" // the script adds them
		if b.Version > 0 {
			hb = wire.AppendBatchSendHeader(hb[:0], h)
		} else {
			hb = wire.EncodeNodeMsg(h)
		}
		args = append(args, string(hb[:len(hb)-1]), string(m.Frame), string(m.EchoFrame), strconv.Itoa(len(h.To)))
		for j, k := range m.Keep {
			if !k.On() {
				args = append(args, "0", "0")
				continue
			}
			slot := h.Echo // the slot after the receivers' is the echo's
			if j < len(h.To) {
				slot = h.To[j]
			}
			stream, meta := r.k.history(Stream{Client: slot})
			keys = append(keys, stream, meta)
			args = append(args, strconv.Itoa(k.Size), ms(k.TTL))
		}
	}
	return rueidis.LuaExec{Keys: keys, Args: args}
}

// splitPositions cuts send_kept.lua's flat reply into each send's slots.
func splitPositions(arr []string, sends []KeptNodeMessage) ([][]wire.Position, error) {
	all, err := parsePositions(arr)
	if err != nil {
		return nil, err
	}
	out := make([][]wire.Position, len(sends))
	for i := range sends {
		n := len(sends[i].Keep)
		if n > len(all) {
			return nil, fmt.Errorf("send_kept: %d positions for %d sends", len(arr), len(sends))
		}
		out[i], all = all[:n:n], all[n:]
	}
	if len(all) != 0 {
		return nil, fmt.Errorf("send_kept: %d positions for %d sends", len(arr), len(sends))
	}
	return out, nil
}

// PublishChannelKept implements History.
func (r *Redis) PublishChannelKept(ctx context.Context, ch string, frame []byte, k Keep) (wire.Position, error) {
	stream, meta := r.k.history(Stream{Channel: ch})
	var s string
	run := func() (err error) {
		s, err = r.chanKept.execResult(ctx, r.rc, []string{stream, meta},
			[]string{r.k.topicChannel(ch), string(frame), strconv.Itoa(k.Size), ms(k.TTL), ms(metaTTL), wire.NewEpoch(), r.publishVerb()}).ToString()
		return err
	}
	err := run()
	if r.cluster { // as doPublish: a script that could not dial was never run
		err = whileUndialled(ctx, err, time.Now().Add(undialledRetryFor), run)
	}
	if err != nil {
		return wire.Position{}, full(err)
	}
	return parsePosition(s)
}

// Positions implements History.
func (r *Redis) Positions(ctx context.Context, streams ...Stream) ([]wire.Position, error) {
	execs := make([]rueidis.LuaExec, len(streams))
	for i, s := range streams {
		stream, meta := r.k.history(s)
		execs[i] = rueidis.LuaExec{Keys: []string{stream, meta}, Args: []string{ms(metaTTL), wire.NewEpoch()}}
	}
	out := make([]wire.Position, len(streams))
	for i, res := range r.position.execMulti(ctx, r.rc, execs...) {
		s, err := res.ToString()
		if err != nil {
			return out, full(err)
		}
		if out[i], err = parsePosition(s); err != nil {
			return out, err
		}
	}
	return out, nil
}

// ReadHistory implements History.
func (r *Redis) ReadHistory(ctx context.Context, reqs ...HistoryRequest) ([]HistoryRead, error) {
	execs := make([]rueidis.LuaExec, len(reqs))
	for i, q := range reqs {
		stream, meta := r.k.history(q.Stream)
		execs[i] = rueidis.LuaExec{Keys: []string{stream, meta},
			Args: []string{strconv.FormatUint(q.After, 10), strconv.Itoa(max(q.Limit, 1)), ms(metaTTL), wire.NewEpoch(), flag(q.Partial)}}
	}
	out := make([]HistoryRead, len(reqs))
	var results []rueidis.RedisResult
	if r.cluster {
		// A failover: the node is subscribed on the promoted master
		// before rueidis routes the slot's commands there; a read that
		// could not dial is tried again rather than the socket told
		// recovered:false for want of a route.
		results = r.execUndialled(ctx, r.readHistory, execs, time.Now().Add(undialledRetryFor))
	} else {
		results = r.readHistory.execMulti(ctx, r.rc, execs...)
	}
	for i, res := range results {
		arr, err := res.AsStrSlice()
		if err != nil {
			return out, full(err)
		}
		if out[i], err = parseHistoryRead(arr); err != nil {
			return out, err
		}
	}
	return out, nil
}

func parseHistoryRead(arr []string) (HistoryRead, error) {
	var h HistoryRead
	if len(arr) < 3 || (len(arr)-3)%3 != 0 {
		return h, fmt.Errorf("read_history: unexpected reply of %d items", len(arr))
	}
	top, err := strconv.ParseUint(arr[1], 10, 64)
	if err != nil || !wire.ValidEpoch(arr[0]) {
		return h, fmt.Errorf("read_history: bad position %q.%q", arr[0], arr[1])
	}
	h.Top = wire.Position{Epoch: arr[0], Offset: top}
	h.Now, _ = strconv.ParseInt(arr[2], 10, 64)
	for i := 3; i < len(arr); i += 3 {
		off, err := strconv.ParseUint(arr[i], 10, 64)
		if err != nil {
			return h, fmt.Errorf("read_history: bad entry id %q", arr[i])
		}
		x, _ := strconv.ParseInt(arr[i+2], 10, 64)
		h.Entries = append(h.Entries, HistoryEntry{Offset: off, Frame: []byte(arr[i+1]), Expires: x})
	}
	return h, nil
}

func parsePosition(s string) (wire.Position, error) {
	p, err := wire.ParsePosition(s)
	if err != nil {
		return p, fmt.Errorf("history script returned %q: %w", s, err)
	}
	return p, nil
}

func parsePositions(arr []string) ([]wire.Position, error) {
	out := make([]wire.Position, len(arr))
	for i, s := range arr {
		p, err := parsePosition(s)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}
