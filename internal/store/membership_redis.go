package store

import (
	"context"

	"github.com/redis/rueidis"
)

// Join implements Membership: the member sets, the client's set and the
// channel index in one round trip, with the client's node read last.
func (r *Redis) Join(ctx context.Context, client string, chans []string) (string, error) {
	if r.cluster {
		return r.joinCluster(ctx, client, chans, true)
	}
	cmds := append(r.addMembership(client, chans), r.rc.B().Hget().Key(r.k.online()).Field(client).Build())
	res := r.rc.DoMulti(ctx, cmds...)
	if err := firstErr(res[:len(res)-1]); err != nil {
		return "", full(err)
	}
	node, err := res[len(res)-1].ToString()
	if rueidis.IsRedisNil(err) {
		return "", nil
	}
	return node, err
}

// Leave implements Membership with leave.lua.
func (r *Redis) Leave(ctx context.Context, client string, chans []string) (string, error) {
	if r.cluster {
		return r.leaveCluster(ctx, client, chans)
	}
	keys := append([]string{r.k.clientChans(client), r.k.chans(), r.k.online()}, r.k.chanMemberKeys(chans)...)
	node, err := r.leave.Exec(ctx, r.rc, keys, append([]string{client}, chans...)).ToString()
	if rueidis.IsRedisNil(err) {
		return "", nil
	}
	return node, err
}

// RestoreMembership implements Membership.
func (r *Redis) RestoreMembership(ctx context.Context, client string, chans []string) error {
	if len(chans) == 0 {
		return nil
	}
	if r.cluster {
		_, err := r.joinCluster(ctx, client, chans, false)
		return err
	}
	return full(firstErr(r.rc.DoMulti(ctx, r.addMembership(client, chans)...)))
}

// addMembership is the writes of a membership: the channels' member sets,
// the client's set and the channel index (room left for one more command).
func (r *Redis) addMembership(client string, chans []string) rueidis.Commands {
	cmds := make(rueidis.Commands, 0, len(chans)+3)
	for _, ch := range chans {
		cmds = append(cmds, r.rc.B().Sadd().Key(r.k.chanMembers(ch)).Member(client).Build())
	}
	return append(cmds,
		r.rc.B().Sadd().Key(r.k.clientChans(client)).Member(chans...).Build(),
		r.rc.B().Sadd().Key(r.k.chans()).Member(chans...).Build())
}

// ChanMembers implements Membership.
func (r *Redis) ChanMembers(ctx context.Context, ch string) ([]string, error) {
	return r.rc.Do(ctx, r.rc.B().Smembers().Key(r.k.chanMembers(ch)).Build()).AsStrSlice()
}

// ClientChans implements Membership.
func (r *Redis) ClientChans(ctx context.Context, client string) ([]string, error) {
	return r.rc.Do(ctx, r.rc.B().Smembers().Key(r.k.clientChans(client)).Build()).AsStrSlice()
}

// Chans implements Membership.
func (r *Redis) Chans(ctx context.Context) ([]string, error) {
	return r.rc.Do(ctx, r.rc.B().Smembers().Key(r.k.chans()).Build()).AsStrSlice()
}

// ChanOnline implements Membership with chan_online.lua, a few channels per
// call so that no single call keeps Redis busy for long.
func (r *Redis) ChanOnline(ctx context.Context, chans []string) ([]int, error) {
	if r.cluster {
		return r.chanOnlineCluster(ctx, chans)
	}
	out := make([]int, 0, len(chans))
	for len(chans) > 0 {
		k := min(len(chans), 50)
		keys := append([]string{r.k.online()}, r.k.chanMemberKeys(chans[:k])...)
		vals, err := r.chanOnline.Exec(ctx, r.rc, keys, nil).AsIntSlice()
		if err != nil {
			return nil, err
		}
		for _, v := range vals {
			out = append(out, int(v))
		}
		chans = chans[k:]
	}
	return out, nil
}
