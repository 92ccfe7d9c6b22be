// Package imhelper is what business services import to drive imserver nodes
// through Redis, with FreeIM's method names:
//
//   - PrevConnectServer returns a signed one-time ws URL for the node that
//     owns a client; the browser connects there.
//   - SendMessage, SendChanMessage and SendBroadcastMessage push JSON payloads.
//   - JoinChan, LeaveChan and the Get* calls manage and query channels (rooms).
//   - HasOnline, GetClientListByOnline and OnlineClients query presence;
//     ForceOffline closes every socket of a client.
//   - EventBus (pub/sub, at most once) and ConsumeEvents (Redis Stream with a
//     consumer group, survives restarts) report online/offline transitions.
//
// A Client is safe for concurrent use. It routes without a Redis round trip
// per send: it keeps a view of the live nodes, refreshed in the background.
//
// Every call that talks to Redis returns by its context's deadline, or by
// Options.CallTimeout (DefaultCallTimeout, 5 s) if the context has none,
// even while Redis hangs; it then fails with an error that is both
// ErrRedisTimeout and context.DeadlineExceeded. Such a call may still have
// taken effect. EventBus and ConsumeEvents run until their context ends
// and then return ctx.Err().
package imhelper
