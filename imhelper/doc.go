// Package imhelper is what business services import to drive imserver nodes
// through Redis, with FreeIM's method names:
//
//   - PrevConnectServer returns a signed one-time ws URL for the node that
//     owns a client; the browser connects there.
//   - SendMessage, SendChanMessage and SendBroadcastMessage push JSON payloads;
//     SendMessages pushes a batch of different messages to different
//     clients (notifications, per-user feeds) for one PUBLISH per owning
//     node per batch.
//   - JoinChan, LeaveChan and the Get* calls manage and query channels (rooms).
//   - HasOnline, GetClientListByOnline and OnlineClients query presence;
//     ForceOffline closes every socket of a client.
//   - EventBus (pub/sub, at most once) and ConsumeEvents (Redis Stream with a
//     consumer group, survives restarts) report online/offline transitions.
//
// # Batches
//
// SendMessages takes []Outgoing{From, To, Payload, Opts}: each message is
// what one SendMessage call would send (receivers deduplicated, WithReceipt
// and WithEcho per message, history per Options.History), and the result
// has one Sent per message. Every message is checked first: an invalid one
// fails the call with a *MessageError naming its index, and nothing is
// sent. Each node then gets its share of the batch in one node message, in
// batch order (with history, one script run per node keeps and publishes
// it), so a receiver gets the batch's messages in order, after what it was
// sent before. A share over 256 sends or 1 MiB of frames goes in several
// node messages; while a node of an older release is live, the batch goes
// as one send per message per owning node. docs/protocol.md §9 ("The
// batch") has the wire format.
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
