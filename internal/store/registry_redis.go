package store

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// IssueToken implements Tokens.
func (r *Redis) IssueToken(ctx context.Context, token string, rec []byte, ttl time.Duration) error {
	return r.rc.Do(ctx, r.rc.B().Set().Key(r.k.token(token)).Value(rueidis.BinaryString(rec)).Px(ttl).Build()).Error()
}

// ConsumeToken implements Tokens with consume_token.lua.
func (r *Redis) ConsumeToken(ctx context.Context, token, node string) ([]byte, TokenStatus, error) {
	res, err := scriptReply(r.consumeToken.Exec(ctx, r.rc, []string{r.k.token(token)}, []string{node}))
	if err != nil {
		return nil, TokenMissing, err
	}
	switch code, _ := res[0].AsInt64(); code {
	case 1:
		if len(res) < 2 {
			return nil, TokenMissing, errEmptyReply
		}
		v, err := res[1].ToString()
		return []byte(v), TokenConsumed, err
	case 2:
		return nil, TokenForeign, nil
	default:
		return nil, TokenMissing, nil
	}
}

// WriteLease implements Registry.
func (r *Redis) WriteLease(ctx context.Context, info wire.NodeInfo, ttl time.Duration) (bool, error) {
	b, _ := json.Marshal(info)
	res := r.rc.DoMulti(ctx,
		r.rc.B().Exists().Key(r.k.nodeKey(info.ID)).Build(),
		r.rc.B().Set().Key(r.k.nodeKey(info.ID)).Value(rueidis.BinaryString(b)).Px(ttl).Build(),
		r.rc.B().Sadd().Key(r.k.nodeSet()).Member(info.ID).Build())
	if err := firstErr(res); err != nil {
		return false, err
	}
	existed, _ := res[0].AsInt64()
	return existed == 1, nil
}

// DeleteLease implements Registry.
func (r *Redis) DeleteLease(ctx context.Context, node string) error {
	return firstErr(r.rc.DoMulti(ctx,
		r.rc.B().Srem().Key(r.k.nodeSet()).Member(node).Build(),
		r.rc.B().Del().Key(r.k.nodeKey(node)).Build()))
}

// Nodes implements Registry. Leases are read one GET each in one round
// trip, not with MGET, so that no command spans keys of several nodes.
func (r *Redis) Nodes(ctx context.Context) (live []wire.NodeInfo, dead []string, err error) {
	ids, err := r.rc.Do(ctx, r.rc.B().Smembers().Key(r.k.nodeSet()).Build()).AsStrSlice()
	if err != nil || len(ids) == 0 {
		return nil, nil, err
	}
	slices.Sort(ids)
	cmds := make(rueidis.Commands, len(ids))
	for i, id := range ids {
		cmds[i] = r.rc.B().Get().Key(r.k.nodeKey(id)).Build()
	}
	for i, res := range r.rc.DoMulti(ctx, cmds...) {
		str, err := res.ToString()
		if err != nil && !rueidis.IsRedisNil(err) {
			return nil, nil, err
		}
		var ni wire.NodeInfo
		if err != nil || json.Unmarshal([]byte(str), &ni) != nil || ni.ID != ids[i] {
			dead = append(dead, ids[i])
			continue
		}
		if !ni.Draining {
			live = append(live, ni)
		}
	}
	return live, dead, nil
}

// ClaimReap implements Registry.
func (r *Redis) ClaimReap(ctx context.Context, node, by string, ttl time.Duration) (bool, error) {
	err := r.rc.Do(ctx, r.rc.B().Set().Key(r.k.reapLock(node)).Value(by).Nx().Px(ttl).Build()).Error()
	if rueidis.IsRedisNil(err) {
		return false, nil // held by another survivor
	}
	return err == nil, err
}

// ReleaseReap implements Registry.
func (r *Redis) ReleaseReap(ctx context.Context, node string) error {
	return r.rc.Do(ctx, r.rc.B().Del().Key(r.k.reapLock(node)).Build()).Error()
}

// FinishReap implements Registry with reap_done.lua.
func (r *Redis) FinishReap(ctx context.Context, node string) (bool, error) {
	n, err := r.reapDone.Exec(ctx, r.rc,
		[]string{r.k.nodeKey(node), r.k.nodeClients(node), r.k.nodeSet(), r.k.reapLock(node)}, []string{node}).AsInt64()
	return n == 1, err
}
