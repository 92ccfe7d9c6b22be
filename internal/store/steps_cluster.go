package store

import (
	"context"
	_ "embed"
	"errors"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// The Cluster side of the scripts that touch keys of several slots on a
// single Redis: each becomes ordered steps, one slot per step (a script
// may touch one slot only). docs/architecture.md, "The Cluster key
// layout", argues the order: a crash between two steps leaves only what
// the node's resync or a reaper repairs, because the node's set of
// clients is written first on a connect and cleared last on an offline,
// and whatever a client step decided but a later step did not finish is
// kept in the client's own slot (its pending events, its leaving set).

// clusterScripts are the scripts only a Cluster runs (lua/cluster/).
type clusterScripts struct {
	connect, online, offline, emit, leaseLive *rueidis.Lua
	appendKept                                *multiScript
}

var (
	//go:embed lua/event_json.lua
	luaEventJSON string // prepended to the scripts that build an online event
	//go:embed lua/cluster/presence.lua
	luaClusterPresence string // prepended to the Cluster scripts that mark a client online
	//go:embed lua/cluster/connect.lua
	scriptClusterConnect string
	//go:embed lua/cluster/online.lua
	scriptClusterOnline string
	//go:embed lua/cluster/offline.lua
	scriptClusterOffline string
	//go:embed lua/cluster/emit.lua
	scriptClusterEmit string
	//go:embed lua/cluster/append.lua
	scriptClusterAppend string
	//go:embed lua/cluster/lease_live.lua
	scriptClusterLeaseLive string
)

func newClusterScripts() clusterScripts {
	return clusterScripts{
		connect:    rueidis.NewLuaScript(luaToken + luaEventJSON + luaClusterPresence + scriptClusterConnect),
		online:     rueidis.NewLuaScript(luaClusterPresence + scriptClusterOnline),
		offline:    rueidis.NewLuaScript(luaClusterPresence + scriptClusterOffline),
		emit:       rueidis.NewLuaScript(scriptClusterEmit),
		leaseLive:  rueidis.NewLuaScript(luaLease + scriptClusterLeaseLive),
		appendKept: newMultiScript(luaHistory + scriptClusterAppend),
	}
}

// clientKeys are a client's keys in its bucket slot, in the order the
// Cluster presence scripts take them (after the token, for connect).
func (r *Redis) clientKeys(client string) []string {
	return []string{r.k.presence(client), r.k.clientNodes(client), r.k.clientChans(client), r.k.pendingEvents(client),
		r.k.eventCounter(client)}
}

// connectCluster is Connect in steps: (1) the node's set lists the client,
// (2) cluster/connect.lua takes the token and marks the client online in
// its slot, the event left pending, (3) the pending events are emitted.
func (r *Redis) connectCluster(ctx context.Context, req ConnectRequest) (ConnectResult, error) {
	added, err := r.addNodeClient(ctx, req.Node, req.Client)
	if err != nil {
		return ConnectResult{Status: TokenMissing}, err
	}
	head, tail := req.Online.EncodeAroundMeta()
	keys := append([]string{r.k.token(req.Client, req.Token)}, r.clientKeys(req.Client)...)
	res, err := scriptReply(r.cl.connect.Exec(ctx, r.rc, keys,
		[]string{req.Node, req.Client, string(head), string(tail), strconv.Itoa(wire.MaxMetaLen)}))
	if err != nil {
		// The script may have run (a lost reply): the node's set keeps
		// the client, and the node's resync settles it.
		return ConnectResult{Status: TokenMissing}, full(err)
	}
	code, _ := res[0].AsInt64()
	if code != 1 && added {
		// Nothing marked online: step 1 is taken back (the caller holds
		// the client's stripe and has no socket of it here). A client the
		// set listed before stays: it may be one the node's resync has
		// yet to settle.
		_ = r.rc.Do(ctx, r.rc.B().Srem().Key(r.k.nodeClients(req.Node)).Member(req.Client).Build()).Error()
	}
	switch code {
	case 1:
		if len(res) < 2 {
			return ConnectResult{Status: TokenMissing}, errEmptyReply
		}
		v, err := res[1].ToString()
		if err != nil {
			return ConnectResult{Status: TokenMissing}, err
		}
		on, pending, err := parseMarkOnline(res[2:])
		if err != nil {
			return ConnectResult{Status: TokenMissing}, err
		}
		r.emitPending(ctx, req.Client, pending)
		return ConnectResult{Status: TokenConsumed, Record: []byte(v), Online: on}, nil
	case 3:
		if len(res) < 2 {
			return ConnectResult{Status: TokenMissing}, errEmptyReply
		}
		v, err := res[1].ToString()
		return ConnectResult{Status: TokenConsumed, Record: []byte(v)}, err
	case 2:
		return ConnectResult{Status: TokenForeign}, nil
	default:
		return ConnectResult{Status: TokenMissing}, nil
	}
}

// markOnlineCluster is MarkOnline in the steps of connectCluster, without
// the token.
func (r *Redis) markOnlineCluster(ctx context.Context, client, node string, ev wire.Event) (bool, []string, error) {
	if _, err := r.addNodeClient(ctx, node, client); err != nil {
		return false, nil, err
	}
	res, err := scriptReply(r.cl.online.Exec(ctx, r.rc, r.clientKeys(client), []string{client, node, string(ev.Encode())}))
	if err != nil {
		return false, nil, full(err)
	}
	on, pending, err := parseMarkOnline(res)
	if err != nil {
		return false, nil, err
	}
	r.emitPending(ctx, client, pending)
	return on.Existed, on.Chans, nil
}

// addNodeClient is step 1 of an online: added reports that the node's set
// did not list the client before.
func (r *Redis) addNodeClient(ctx context.Context, node, client string) (added bool, err error) {
	n, err := r.rc.Do(ctx, r.rc.B().Sadd().Key(r.k.nodeClients(node)).Member(client).Build()).AsInt64()
	return n == 1, full(err)
}

// parseMarkOnline reads mark_online's reply (lua/cluster/presence.lua).
func parseMarkOnline(res []rueidis.RedisMessage) (*Online, []string, error) {
	if len(res) < 2 {
		return nil, nil, errEmptyReply
	}
	existed, _ := res[0].AsInt64()
	n, _ := res[1].AsInt64()
	if n < 0 || int(n) > len(res)-2 {
		return nil, nil, errors.New("online: bad reply")
	}
	rest := strs(res[2:])
	return &Online{Existed: existed == 1, Chans: rest[:n]}, rest[n:], nil
}

// offlineCluster is MarkOffline in steps: (1) for a reap, the node's lease
// is read (it may be back); (2) cluster/offline.lua in the client's slot;
// (3) the channels it left; (4) its pending events emitted; (5) what
// those two steps did taken off the client's leaving set and pending
// list; (6) the client off the node's set, last, so that an offline cut
// short anywhere before is found there again and finished by (2) running
// once more.
func (r *Redis) offlineCluster(ctx context.Context, req OfflineRequest) (OfflineResult, error) {
	if req.Reaping {
		live, err := r.cl.leaseLive.Exec(ctx, r.rc, []string{r.k.nodeKey(req.Node)}, nil).AsInt64()
		if err != nil {
			return 0, err
		}
		if live == 1 {
			return NodeIsBack, nil
		}
	}
	c := req.Client
	keys := append(r.clientKeys(c)[:3:3], r.k.clientLeaving(c), r.k.pendingEvents(c), r.k.eventCounter(c))
	res, err := scriptReply(r.cl.offline.Exec(ctx, r.rc, keys, []string{c, req.Node, string(req.Offline.Encode())}))
	if err != nil {
		return 0, err
	}
	went, _ := res[0].AsInt64()
	var n int64
	if len(res) > 1 {
		n, _ = res[1].AsInt64()
	}
	rest := strs(res[min(2, len(res)):])
	if n < 0 || int(n) > len(rest) {
		return 0, errors.New("offline: bad reply")
	}
	leaving, pending := rest[:n], rest[n:]
	if err := r.leaveChannels(ctx, c, leaving); err != nil {
		return 0, err
	}
	if err := r.emit(ctx, c, pending); err != nil {
		return 0, err
	}
	if err := r.clearDone(ctx, c, leaving, pending); err != nil {
		return 0, err
	}
	if err := r.rc.Do(ctx, r.rc.B().Srem().Key(r.k.nodeClients(req.Node)).Member(c).Build()).Error(); err != nil {
		return 0, err
	}
	if went == 1 {
		return WentOffline, nil
	}
	return LivesElsewhere, nil
}

// emitPending is the event step of an online: the pending events are
// emitted, then taken off the list. A failure leaves them pending, to go
// out with the client's next presence step (its offline, at the latest):
// an event is then late, never lost, and the online itself stands.
func (r *Redis) emitPending(ctx context.Context, client string, pending []string) {
	if r.emit(ctx, client, pending) == nil {
		_ = r.clearDone(ctx, client, nil, pending)
	}
}

// emit appends client's pending events to the event stream and publishes
// them, in one script in the stream's slot, skipping those another party
// emitted already (cluster/emit.lua).
func (r *Redis) emit(ctx context.Context, client string, events []string) error {
	if len(events) == 0 {
		return nil
	}
	args := append([]string{r.k.eventChannel(), r.streamCap, ms(eventMarkTTL)}, events...)
	return r.cl.emit.Exec(ctx, r.rc, []string{r.k.eventStream(), r.k.eventMark(client)}, args).Error()
}

// eventMarkTTL is how long a client's event mark outlives its last event
// emitted: a party that emits later than this after an event was decided
// (none does: a reaper comes within a lease and a grace) could append it
// twice. It is shorter than the event counter's 48 h (cluster/presence.lua),
// so that the counter never starts again below a mark.
const eventMarkTTL = 24 * time.Hour

// clearDone takes the channels left and the events emitted off a client's
// leaving set and pending list: by value, so that what another step added
// meanwhile stays.
func (r *Redis) clearDone(ctx context.Context, client string, left, emitted []string) error {
	var cmds rueidis.Commands
	if len(left) > 0 {
		cmds = append(cmds, r.rc.B().Srem().Key(r.k.clientLeaving(client)).Member(left...).Build())
	}
	for _, e := range emitted {
		cmds = append(cmds, r.rc.B().Lrem().Key(r.k.pendingEvents(client)).Count(1).Element(e).Build())
	}
	if len(cmds) == 0 {
		return nil
	}
	return firstErr(r.rc.DoMulti(ctx, cmds...))
}

// leaveChannels takes client out of each channel's member set (each in its
// channel's slot), and a channel left empty out of the index of channels:
// the index entry goes, then the member count is read again and the entry
// comes back if a join came in between, so that the index never misses a
// channel that has members (a join adds the member before the entry).
func (r *Redis) leaveChannels(ctx context.Context, client string, chans []string) error {
	if len(chans) == 0 {
		return nil
	}
	cmds := make(rueidis.Commands, 0, 2*len(chans))
	for _, ch := range chans {
		cmds = append(cmds,
			r.rc.B().Srem().Key(r.k.chanMembers(ch)).Member(client).Build(),
			r.rc.B().Scard().Key(r.k.chanMembers(ch)).Build())
	}
	res := r.rc.DoMulti(ctx, cmds...)
	if err := firstErr(res); err != nil {
		return err
	}
	var empty []string
	for i, ch := range chans {
		if n, _ := res[2*i+1].AsInt64(); n == 0 {
			empty = append(empty, ch)
		}
	}
	if len(empty) == 0 {
		return nil
	}
	if err := r.rc.Do(ctx, r.rc.B().Srem().Key(r.k.chans()).Member(empty...).Build()).Error(); err != nil {
		return err
	}
	sizes, err := r.ChanSizes(ctx, empty)
	if err != nil {
		return err
	}
	var back []string
	for i, n := range sizes {
		if n > 0 {
			back = append(back, empty[i])
		}
	}
	if len(back) == 0 {
		return nil
	}
	return full(r.rc.Do(ctx, r.rc.B().Sadd().Key(r.k.chans()).Member(back...).Build()).Error())
}

// joinCluster is the writes of a membership in steps: the client's channel
// set (with its node read in the same slot), then the channels' member
// sets, then the index. A join cut short leaves the client's set ahead of
// the member sets, which its offline (which leaves every channel in it)
// cleans; never a member that the client's set does not name.
func (r *Redis) joinCluster(ctx context.Context, client string, chans []string, readNode bool) (string, error) {
	cmds := rueidis.Commands{r.rc.B().Sadd().Key(r.k.clientChans(client)).Member(chans...).Build()}
	if readNode {
		cmds = append(cmds, r.rc.B().Hget().Key(r.k.presence(client)).Field(client).Build())
	}
	res := r.rc.DoMulti(ctx, cmds...)
	if err := res[0].Error(); err != nil {
		return "", full(err)
	}
	node := ""
	if readNode {
		var err error
		if node, err = res[1].ToString(); err != nil && !rueidis.IsRedisNil(err) {
			return "", err
		}
	}
	members := make(rueidis.Commands, len(chans))
	for i, ch := range chans {
		members[i] = r.rc.B().Sadd().Key(r.k.chanMembers(ch)).Member(client).Build()
	}
	if err := firstErr(r.rc.DoMulti(ctx, members...)); err != nil {
		return "", full(err)
	}
	return node, full(r.rc.Do(ctx, r.rc.B().Sadd().Key(r.k.chans()).Member(chans...).Build()).Error())
}

// leaveCluster is Leave in the other order: the member sets (and the
// index), then the client's set, with its node read in the same slot.
func (r *Redis) leaveCluster(ctx context.Context, client string, chans []string) (string, error) {
	if err := r.leaveChannels(ctx, client, chans); err != nil {
		return "", err
	}
	res := r.rc.DoMulti(ctx,
		r.rc.B().Srem().Key(r.k.clientChans(client)).Member(chans...).Build(),
		r.rc.B().Hget().Key(r.k.presence(client)).Field(client).Build())
	if err := res[0].Error(); err != nil {
		return "", err
	}
	node, err := res[1].ToString()
	if rueidis.IsRedisNil(err) {
		return "", nil
	}
	return node, err
}

// byBucket groups ids by presence bucket, keeping each id's index.
func byBucket(ids []string) map[int][]int {
	out := map[int][]int{}
	for i, id := range ids {
		b := bucketOf(id)
		out[b] = append(out[b], i)
	}
	return out
}

// areOnlineCluster is AreOnline with one HMGET per bucket, in one round
// trip (rueidis sends each master its own).
func (r *Redis) areOnlineCluster(ctx context.Context, ids []string) ([]bool, error) {
	groups := byBucket(ids)
	cmds := make(rueidis.Commands, 0, len(groups))
	order := make([][]int, 0, len(groups))
	for b, idx := range groups {
		fields := make([]string, len(idx))
		for j, i := range idx {
			fields[j] = ids[i]
		}
		cmds = append(cmds, r.rc.B().Hmget().Key(r.k.onlineBucket(b)).Field(fields...).Build())
		order = append(order, idx)
	}
	out := make([]bool, len(ids))
	for g, res := range r.rc.DoMulti(ctx, cmds...) {
		vals, err := res.ToArray()
		if err != nil {
			return nil, err
		}
		for j, v := range vals {
			if j < len(order[g]) {
				out[order[g][j]] = !v.IsNil()
			}
		}
	}
	return out, nil
}

// onlineCountCluster sums every bucket's HLEN, in one round trip.
func (r *Redis) onlineCountCluster(ctx context.Context) (int64, error) {
	cmds := make(rueidis.Commands, presenceBuckets)
	for b := range cmds {
		cmds[b] = r.rc.B().Hlen().Key(r.k.onlineBucket(b)).Build()
	}
	var sum int64
	for _, res := range r.rc.DoMulti(ctx, cmds...) {
		n, err := res.AsInt64()
		if err != nil {
			return 0, err
		}
		sum += n
	}
	return sum, nil
}

// bucketCursorBits is where OnlineClients' cursor keeps the bucket on a
// Cluster: bucket<<48 | the bucket's HSCAN cursor (far below 2^48 for any
// hash Redis can hold).
const bucketCursorBits = 48

// onlineClientsCluster pages through the buckets in order, HSCAN within
// each, until it has a page's worth or has passed the last bucket.
func (r *Redis) onlineClientsCluster(ctx context.Context, cursor uint64) ([]string, uint64, error) {
	b, c := int(cursor>>bucketCursorBits), cursor&(1<<bucketCursorBits-1)
	var ids []string
	for b < presenceBuckets && len(ids) < 1000 {
		e, err := r.rc.Do(ctx, r.rc.B().Hscan().Key(r.k.onlineBucket(b)).Cursor(c).Count(1000).Build()).AsScanEntry()
		if err != nil {
			return nil, 0, err
		}
		for i := 0; i < len(e.Elements); i += 2 { // field, value pairs
			ids = append(ids, e.Elements[i])
		}
		if c = e.Cursor; c == 0 {
			b++
		}
	}
	if b >= presenceBuckets {
		return ids, 0, nil
	}
	return ids, uint64(b)<<bucketCursorBits | c, nil
}

// chanOnlineCluster reads each channel's members, then whether each is
// online with areOnlineCluster: two round trips.
func (r *Redis) chanOnlineCluster(ctx context.Context, chans []string) ([]int, error) {
	cmds := make(rueidis.Commands, len(chans))
	for i, ch := range chans {
		cmds[i] = r.rc.B().Smembers().Key(r.k.chanMembers(ch)).Build()
	}
	members := make([][]string, len(chans))
	var all []string
	for i, res := range r.rc.DoMulti(ctx, cmds...) {
		m, err := res.AsStrSlice()
		if err != nil {
			return nil, err
		}
		members[i] = m
		all = append(all, m...)
	}
	on, err := r.areOnlineCluster(ctx, all)
	if err != nil {
		return nil, err
	}
	out := make([]int, len(chans))
	k := 0
	for i, m := range members {
		for range m {
			if on[k] {
				out[i]++
			}
			k++
		}
	}
	return out, nil
}

// publishKeptCluster is PublishKeptBatches in two steps: every kept copy
// appended to its receiver's stream (one script per stream, all in one
// round trip), then each batch published with its positions. A batch
// whose appends failed is not published; one cut short between the steps
// has kept copies nobody got live, for a call that returned an error: the
// receivers get them when they next resume.
func (r *Redis) publishKeptCluster(ctx context.Context, batches []KeptBatch) []KeptResult {
	type slotRef struct{ batch, send, slot int }
	var execs []rueidis.LuaExec
	var refs []slotRef
	epoch := wire.NewEpoch()
	for bi := range batches {
		for si := range batches[bi].Sends {
			m := &batches[bi].Sends[si]
			for j, k := range m.Keep {
				if !k.On() {
					continue
				}
				owner, frame := m.Header.Echo, m.EchoFrame // the slot after the receivers' is the echo's
				if j < len(m.Header.To) {
					owner, frame = m.Header.To[j], m.Frame
				}
				stream, meta := r.k.history(Stream{Client: owner})
				execs = append(execs, rueidis.LuaExec{Keys: []string{stream, meta},
					Args: []string{string(frame), strconv.Itoa(k.Size), ms(k.TTL), epoch, ms(metaTTL)}})
				refs = append(refs, slotRef{bi, si, j})
			}
		}
	}
	out := make([]KeptResult, len(batches))
	for bi := range batches {
		out[bi].Pos = make([][]wire.Position, len(batches[bi].Sends))
		for si := range batches[bi].Sends {
			out[bi].Pos[si] = make([]wire.Position, len(batches[bi].Sends[si].Keep))
		}
	}
	give := time.Now().Add(undialledRetryFor) // one budget for the whole call, as doPublish
	for i, res := range r.execUndialled(ctx, r.cl.appendKept, execs, give) {
		ref := refs[i]
		s, err := res.ToString()
		if err == nil {
			out[ref.batch].Pos[ref.send][ref.slot], err = parsePosition(s)
		}
		if err != nil && out[ref.batch].Err == nil {
			out[ref.batch].Err = full(err)
		}
	}
	var cmds rueidis.Commands
	var sent []int
	for bi := range batches {
		if out[bi].Err != nil {
			continue
		}
		cmds = append(cmds, r.publish(r.k.nodeChannel(batches[bi].Node), keptMessage(&batches[bi], out[bi].Pos)))
		sent = append(sent, bi)
	}
	for i, res := range r.rc.DoMulti(ctx, cmds...) {
		err := res.Error()
		if isDialError(err) { // never sent: see doPublish
			err = r.retryPublish(ctx, cmds[i], err, give)
		}
		out[sent[i]].Err = err
	}
	return out
}

// execUndialled runs the script over execs, and again those that failed
// to dial their master (never sent, so never run: right after a failover
// rueidis may route to the dead master until it has learnt of the new
// one, as doPublish says), until give or ctx ends.
func (r *Redis) execUndialled(ctx context.Context, m *multiScript, execs []rueidis.LuaExec, give time.Time) []rueidis.RedisResult {
	res := m.execMulti(ctx, r.rc, execs...)
	_ = whileUndialled(ctx, undialled(res), give, func() error {
		var again []int
		var retry []rueidis.LuaExec
		for i, x := range res {
			if isDialError(x.Error()) {
				again = append(again, i)
				retry = append(retry, execs[i])
			}
		}
		for j, x := range m.execMulti(ctx, r.rc, retry...) {
			res[again[j]] = x
		}
		return undialled(res)
	})
	return res
}

// undialled returns the first dial error among res, or nil.
func undialled(res []rueidis.RedisResult) error {
	for _, x := range res {
		if err := x.Error(); isDialError(err) {
			return err
		}
	}
	return nil
}

// keptMessage is the node message of b with its positions, as
// send_kept.lua builds it on a single Redis.
func keptMessage(b *KeptBatch, pos [][]wire.Position) []byte {
	sends := make([]wire.BatchSend, len(b.Sends))
	for i := range b.Sends {
		m := &b.Sends[i]
		h := m.Header
		n := len(h.To)
		h.Pos, h.EchoPos = nil, ""
		if n > 0 {
			h.Pos = make([]string, n)
			for j := 0; j < n && j < len(pos[i]); j++ {
				h.Pos[j] = positionText(pos[i][j])
			}
		}
		if h.Echo != "" && len(pos[i]) > n {
			h.EchoPos = positionText(pos[i][n])
		}
		if b.Version == 0 {
			frames := [][]byte{m.Frame}
			if h.Echo != "" {
				frames = append(frames, m.EchoFrame)
			}
			return wire.EncodeNodeMsg(h, frames...)
		}
		sends[i] = wire.BatchSend{Header: h, Frame: m.Frame, Echo: m.EchoFrame}
	}
	return wire.EncodeBatch(b.Version, sends)
}

// positionText is a position as the scripts write it ("" for none).
func positionText(p wire.Position) string {
	if p.Epoch == "" {
		return ""
	}
	return p.Epoch + "." + strconv.FormatUint(p.Offset, 10)
}
