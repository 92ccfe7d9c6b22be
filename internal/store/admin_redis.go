package store

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// Admin is what an operator tool reads beyond what delivery needs: every
// node holding a lease, draining ones included, with what is left of the
// lease and how many clients it holds, and the size of channels. Nothing on
// a send path uses it.
type Admin interface {
	// NodeStatuses returns every registered node whose lease is live,
	// draining or not, sorted by id. Nodes whose lease lapsed are left out.
	NodeStatuses(ctx context.Context) ([]NodeStatus, error)
	// ChanSizes returns the number of members of each channel, online or
	// not, in the order given.
	ChanSizes(ctx context.Context, chans []string) ([]int64, error)
}

// NodeStatus is one node's registry entry with the state around it.
type NodeStatus struct {
	Info      wire.NodeInfo
	LeaseLeft time.Duration // until the lease lapses unless refreshed
	Clients   int64         // clients with at least one socket on the node
}

var _ Admin = (*Redis)(nil)

// NodeStatuses implements Admin in two round trips: the registry index,
// then a GET, a PTTL and an SCARD per node, each on one node's key so that
// no command spans keys of several nodes.
func (r *Redis) NodeStatuses(ctx context.Context) ([]NodeStatus, error) {
	ids, err := r.rc.Do(ctx, r.rc.B().Smembers().Key(r.k.nodeSet()).Build()).AsStrSlice()
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	slices.Sort(ids)
	const perNode = 3
	cmds := make(rueidis.Commands, 0, perNode*len(ids))
	for _, id := range ids {
		cmds = append(cmds,
			r.rc.B().Get().Key(r.k.nodeKey(id)).Build(),
			r.rc.B().Pttl().Key(r.k.nodeKey(id)).Build(),
			r.rc.B().Scard().Key(r.k.nodeClients(id)).Build())
	}
	res := r.rc.DoMulti(ctx, cmds...)
	var out []NodeStatus
	for i, id := range ids {
		lease, ttl, clients := res[perNode*i], res[perNode*i+1], res[perNode*i+2]
		str, err := lease.ToString()
		if rueidis.IsRedisNil(err) {
			continue // lapsed: dead, waiting for a survivor to reap it
		}
		if err != nil {
			return nil, err
		}
		var ni wire.NodeInfo
		if json.Unmarshal([]byte(str), &ni) != nil || ni.ID != id {
			continue // not a lease a node wrote; Nodes treats it as dead too
		}
		ms, err := ttl.AsInt64()
		if err != nil {
			return nil, err
		}
		n, err := clients.AsInt64()
		if err != nil {
			return nil, err
		}
		// PTTL is -2 when the lease lapsed between the GET and it.
		out = append(out, NodeStatus{Info: ni, LeaseLeft: time.Duration(max(ms, 0)) * time.Millisecond, Clients: n})
	}
	return out, nil
}

// ChanSizes implements Admin with one SCARD per channel in one round trip.
func (r *Redis) ChanSizes(ctx context.Context, chans []string) ([]int64, error) {
	if len(chans) == 0 {
		return nil, nil
	}
	cmds := make(rueidis.Commands, len(chans))
	for i, ch := range chans {
		cmds[i] = r.rc.B().Scard().Key(r.k.chanMembers(ch)).Build()
	}
	out := make([]int64, len(chans))
	for i, res := range r.rc.DoMulti(ctx, cmds...) {
		n, err := res.AsInt64()
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}
