package store

import (
	"context"
	"errors"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// MarkOnline implements Presence with online.lua.
func (r *Redis) MarkOnline(ctx context.Context, client, node string, ev wire.Event) (bool, []string, error) {
	if r.cluster {
		return r.markOnlineCluster(ctx, client, node, ev)
	}
	res, err := scriptReply(r.online.Exec(ctx, r.rc,
		[]string{r.k.online(), r.k.nodeClients(node), r.k.clientNodes(client), r.k.clientChans(client), r.k.eventStream()},
		[]string{client, node, string(ev.Encode()), r.k.eventChannel(), r.streamCap},
	))
	if err != nil {
		return false, nil, full(err)
	}
	flag, _ := res[0].AsInt64()
	return flag == 1, strs(res[1:]), nil
}

// MarkOffline implements Presence with offline.lua. The script needs the
// member set of every channel the client joined as KEYS; the caller's hint
// is usually right, and when it is not the script says so without writing
// and names the channels, and it runs once more with those.
func (r *Redis) MarkOffline(ctx context.Context, req OfflineRequest) (OfflineResult, error) {
	if r.cluster {
		return r.offlineCluster(ctx, req)
	}
	joined := req.Joined
	reaping := "0"
	if req.Reaping {
		reaping = "1"
	}
	ev := string(req.Offline.Encode())
	for attempt := 0; ; attempt++ {
		keys := append([]string{r.k.online(), r.k.nodeClients(req.Node), r.k.clientNodes(req.Client),
			r.k.clientChans(req.Client), r.k.eventStream(), r.k.chans(), r.k.nodeKey(req.Node)},
			r.k.chanMemberKeys(joined)...)
		args := append([]string{req.Client, req.Node, ev, r.k.eventChannel(), r.streamCap, reaping}, joined...)
		res, err := scriptReply(r.offline.Exec(ctx, r.rc, keys, args))
		if err != nil {
			return 0, err
		}
		switch code, _ := res[0].AsInt64(); code {
		case 1:
			return WentOffline, nil
		case 0:
			return LivesElsewhere, nil
		case -1:
			return NodeIsBack, nil
		}
		// 2: joined channels the hint lacked. A JoinChan racing us can
		// repeat this; a few rounds always settle it.
		if attempt == 5 {
			return 0, errors.New("offline: the client's channels kept changing")
		}
		joined = strs(res[1:])
	}
}

// NodeClients implements Presence.
func (r *Redis) NodeClients(ctx context.Context, node string, cursor uint64) ([]string, uint64, error) {
	e, err := r.rc.Do(ctx, r.rc.B().Sscan().Key(r.k.nodeClients(node)).Cursor(cursor).Count(500).Build()).AsScanEntry()
	return e.Elements, e.Cursor, err
}

// ClientNode implements Presence.
func (r *Redis) ClientNode(ctx context.Context, client string) (string, error) {
	node, err := r.rc.Do(ctx, r.rc.B().Hget().Key(r.k.presence(client)).Field(client).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return "", nil
	}
	return node, err
}

// ClientNodes implements Presence with one SMEMBERS.
func (r *Redis) ClientNodes(ctx context.Context, client string) ([]string, error) {
	return r.rc.Do(ctx, r.rc.B().Smembers().Key(r.k.clientNodes(client)).Build()).AsStrSlice()
}

// AreOnline implements Presence with one HMGET.
func (r *Redis) AreOnline(ctx context.Context, ids []string) ([]bool, error) {
	if r.cluster {
		return r.areOnlineCluster(ctx, ids)
	}
	vals, err := r.rc.Do(ctx, r.rc.B().Hmget().Key(r.k.online()).Field(ids...).Build()).ToArray()
	if err != nil {
		return nil, err
	}
	out := make([]bool, len(ids))
	for i, v := range vals {
		out[i] = !v.IsNil()
	}
	return out, nil
}

// OnlineCount implements Presence.
func (r *Redis) OnlineCount(ctx context.Context) (int64, error) {
	if r.cluster {
		return r.onlineCountCluster(ctx)
	}
	return r.rc.Do(ctx, r.rc.B().Hlen().Key(r.k.online()).Build()).AsInt64()
}

// OnlineClients implements Presence with HSCAN, so that a million online
// clients never make one giant reply.
func (r *Redis) OnlineClients(ctx context.Context, cursor uint64) ([]string, uint64, error) {
	if r.cluster {
		return r.onlineClientsCluster(ctx, cursor)
	}
	e, err := r.rc.Do(ctx, r.rc.B().Hscan().Key(r.k.online()).Cursor(cursor).Count(1000).Build()).AsScanEntry()
	if err != nil {
		return nil, 0, err
	}
	ids := make([]string, 0, len(e.Elements)/2)
	for i := 0; i < len(e.Elements); i += 2 { // field, value pairs
		ids = append(ids, e.Elements[i])
	}
	return ids, e.Cursor, nil
}
