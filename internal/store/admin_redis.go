package store

import (
	"context"
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

// NodeStatuses implements Admin: the leases as Nodes reads them, then an
// SCARD per live node in one round trip, each on one node's key so that no
// command spans keys of several nodes.
func (r *Redis) NodeStatuses(ctx context.Context) ([]NodeStatus, error) {
	leases, err := r.leases(ctx)
	if err != nil {
		return nil, err
	}
	var out []NodeStatus
	var cmds rueidis.Commands
	for _, l := range leases {
		if l.live { // a lapsed one is dead, waiting for a survivor to reap it
			out = append(out, NodeStatus{Info: l.info, LeaseLeft: l.left})
			cmds = append(cmds, r.rc.B().Scard().Key(r.k.nodeClients(l.id)).Build())
		}
	}
	if len(cmds) == 0 {
		return nil, nil
	}
	for i, res := range r.rc.DoMulti(ctx, cmds...) {
		if out[i].Clients, err = res.AsInt64(); err != nil {
			return nil, err
		}
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
