package store

import (
	"context"
	"strconv"

	"github.com/imbroker/imbroker/internal/wire"
)

// Connect implements Connects with connect.lua.
func (r *Redis) Connect(ctx context.Context, req ConnectRequest) (ConnectResult, error) {
	if r.cluster {
		return r.connectCluster(ctx, req)
	}
	head, tail := req.Online.EncodeAroundMeta()
	res, err := scriptReply(r.connect.Exec(ctx, r.rc,
		[]string{r.k.token(req.Client, req.Token), r.k.online(), r.k.nodeClients(req.Node), r.k.clientNodes(req.Client),
			r.k.clientChans(req.Client), r.k.eventStream()},
		[]string{req.Node, req.Client, string(head), string(tail), r.k.eventChannel(), r.streamCap,
			strconv.Itoa(wire.MaxMetaLen)},
	))
	if err != nil {
		return ConnectResult{Status: TokenMissing}, full(err)
	}
	switch code, _ := res[0].AsInt64(); code {
	case 1, 3:
		if len(res) < 2 || code == 1 && len(res) < 3 {
			return ConnectResult{Status: TokenMissing}, errEmptyReply
		}
		v, err := res[1].ToString()
		if err != nil {
			return ConnectResult{Status: TokenMissing}, err
		}
		out := ConnectResult{Status: TokenConsumed, Record: []byte(v)}
		if code == 1 {
			existed, _ := res[2].AsInt64()
			out.Online = &Online{Existed: existed == 1, Chans: strs(res[3:])}
		}
		return out, nil
	case 2:
		return ConnectResult{Status: TokenForeign}, nil
	default:
		return ConnectResult{Status: TokenMissing}, nil
	}
}
