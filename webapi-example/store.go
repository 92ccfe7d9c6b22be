package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// The business data lives in the same Redis as the broker's, under its own
// prefix. The broker knows nothing about it.
//
//	chat:nick:<nick key>        STRING user id (the nickname is the account; the
//	                            key is its normal form, see parseNick)
//	chat:user:<id>              HASH nick
//	chat:sess:<sid>             STRING user id, expires
//	chat:rooms                  SET room names (a room exists while it has
//	                            members; the default rooms always)
//	chat:room:<r>:members       SET user ids (the business membership)
//	chat:user:<id>:rooms        SET room names
//	chat:room:<r>:seq           STRING counter of message ids
//	chat:room:<r>:hist          ZSET message ids, all score 0 (ids sort in order)
//	chat:room:<r>:msg           HASH message id -> roomMessage JSON
//	chat:dm:<a>:<b>:seq         the same three keys for the private conversation
//	chat:dm:<a>:<b>:hist        of users a and b (a < b), with directMessage
//	chat:dm:<a>:<b>:msg         JSON
//	chat:user:<id>:dms          ZSET the other user of each private conversation,
//	                            scored by its last message's time (unix ms)
//	chat:inbox:<id>             LIST of directMessage JSON kept for an offline user
const (
	keyPrefix       = "chat:"
	sessionTTL      = 7 * 24 * time.Hour
	historyCap      = 1000 // messages kept per room or private conversation
	conversationCap = 100  // private conversations listed per user, newest first
	inboxCap        = 200  // offline messages kept per user
	recallWindow    = 2 * time.Minute
	chanPrefix      = "room." // broker channel of a room
	historyMaxGet   = 100
)

// defaultRoomNames are the rooms that exist from the start and are kept when
// empty.
func defaultRoomNames() []string { return []string{"lobby", "random"} }

type user struct {
	ID   string `json:"id"`
	Nick string `json:"nick"`
}

// roomMessage is stored in a room's history and is the payload of the
// channel frame that carries it.
type roomMessage struct {
	Kind  string `json:"kind"` // "chat"
	Room  string `json:"room"`
	MsgID string `json:"msgId"`
	From  string `json:"from"`
	Nick  string `json:"nick"`
	Text  string `json:"text"`
	TS    int64  `json:"ts"` // unix ms
}

// directMessage is the payload of a private message, what its
// conversation's history keeps, and what the inbox keeps for an offline
// receiver.
type directMessage struct {
	Kind    string `json:"kind"`  // "dm"
	MsgID   string `json:"msgId"` // in the conversation's history
	From    string `json:"from"`
	Nick    string `json:"nick"`
	To      string `json:"to"`
	ToNick  string `json:"toNick"`
	Text    string `json:"text"`
	TS      int64  `json:"ts"`
	Offline bool   `json:"offline,omitempty"` // sent while the receiver was offline
}

type store struct{ rc rueidis.Client }

func (s store) do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	return s.rc.Do(ctx, cmd)
}

func (s store) b() rueidis.Builder { return s.rc.B() }

// signIn returns the account of the nickname key, creating it on first use,
// shown as nick. Anyone who knows a nickname can sign in as it: this is a
// demo, not an identity system.
func (s store) signIn(ctx context.Context, nick, key string) (user, error) {
	// The account is written before the nickname points to it, so that a
	// concurrent sign-in with the same new nickname never finds a dangling id.
	nickKey := keyPrefix + "nick:" + key
	id := "u_" + randomHex(8)
	userKey := keyPrefix + "user:" + id
	if err := s.do(ctx, s.b().Hset().Key(userKey).FieldValue().FieldValue("nick", nick).Build()).Error(); err != nil {
		return user{}, err
	}
	err := s.do(ctx, s.b().Set().Key(nickKey).Value(id).Nx().Build()).Error()
	if err == nil {
		return user{ID: id, Nick: nick}, nil
	}
	if !rueidis.IsRedisNil(err) { // nil: the nickname was taken
		return user{}, err
	}
	_ = s.do(ctx, s.b().Del().Key(userKey).Build()).Error()
	if id, err = s.do(ctx, s.b().Get().Key(nickKey).Build()).ToString(); err != nil {
		return user{}, err
	}
	return s.user(ctx, id)
}

// user returns the account id; a missing one is errNotFound.
func (s store) user(ctx context.Context, id string) (user, error) {
	nick, err := s.do(ctx, s.b().Hget().Key(keyPrefix+"user:"+id).Field("nick").Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return user{}, errNotFound
	}
	return user{ID: id, Nick: nick}, err
}

// userByNick returns the account of a nickname key; a missing one is
// errNotFound.
func (s store) userByNick(ctx context.Context, key string) (user, error) {
	id, err := s.do(ctx, s.b().Get().Key(keyPrefix+"nick:"+key).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return user{}, errNotFound
	}
	if err != nil {
		return user{}, err
	}
	return s.user(ctx, id)
}

// users resolves many ids at once; unknown ids are left out.
func (s store) users(ctx context.Context, ids []string) ([]user, error) {
	if len(ids) == 0 {
		return []user{}, nil
	}
	cmds := make(rueidis.Commands, len(ids))
	for i, id := range ids {
		cmds[i] = s.b().Hget().Key(keyPrefix + "user:" + id).Field("nick").Build()
	}
	out := make([]user, 0, len(ids))
	for i, r := range s.rc.DoMulti(ctx, cmds...) {
		nick, err := r.ToString()
		if rueidis.IsRedisNil(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, user{ID: ids[i], Nick: nick})
	}
	slices.SortFunc(out, func(a, b user) int { return strings.Compare(strings.ToLower(a.Nick), strings.ToLower(b.Nick)) })
	return out, nil
}

// newSession returns a fresh session id (128 random bits) for userID.
func (s store) newSession(ctx context.Context, userID string) (string, error) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	sid := base64.RawURLEncoding.EncodeToString(b)
	err := s.do(ctx, s.b().Set().Key(keyPrefix+"sess:"+sid).Value(userID).Ex(sessionTTL).Build()).Error()
	return sid, err
}

func (s store) session(ctx context.Context, sid string) (string, error) {
	id, err := s.do(ctx, s.b().Get().Key(keyPrefix+"sess:"+sid).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return "", errNotFound
	}
	return id, err
}

func (s store) endSession(ctx context.Context, sid string) error {
	return s.do(ctx, s.b().Del().Key(keyPrefix+"sess:"+sid).Build()).Error()
}

func (s store) addRooms(ctx context.Context, names ...string) error {
	return s.do(ctx, s.b().Sadd().Key(keyPrefix+"rooms").Member(names...).Build()).Error()
}

func (s store) rooms(ctx context.Context) ([]string, error) {
	names, err := s.do(ctx, s.b().Smembers().Key(keyPrefix+"rooms").Build()).AsStrSlice()
	slices.Sort(names)
	return names, err
}

func (s store) userRooms(ctx context.Context, id string) ([]string, error) {
	names, err := s.do(ctx, s.b().Smembers().Key(keyPrefix+"user:"+id+":rooms").Build()).AsStrSlice()
	slices.Sort(names)
	return names, err
}

func (s store) isMember(ctx context.Context, room, id string) (bool, error) {
	return s.do(ctx, s.b().Sismember().Key(roomKey(room, "members")).Member(id).Build()).AsBool()
}

func (s store) roomMembers(ctx context.Context, room string) ([]string, error) {
	return s.do(ctx, s.b().Smembers().Key(roomKey(room, "members")).Build()).AsStrSlice()
}

func (s store) memberCounts(ctx context.Context, rooms []string) ([]int64, error) {
	if len(rooms) == 0 {
		return nil, nil
	}
	cmds := make(rueidis.Commands, len(rooms))
	for i, r := range rooms {
		cmds[i] = s.b().Scard().Key(roomKey(r, "members")).Build()
	}
	out := make([]int64, len(rooms))
	for i, r := range s.rc.DoMulti(ctx, cmds...) {
		n, err := r.AsInt64()
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

var (
	errTooManyRooms  = errors.New("the service has as many rooms as it may have")
	errTooManyJoined = errors.New("the user is in as many rooms as a user may be")
)

// joinScript checks the caps and joins in one step: checked first and joined
// after, concurrent joins of new rooms would all pass the check. A room it
// creates starts with no history, even if a message sent while the room's
// last member left was stored after the room was deleted.
//
//	KEYS: chat:rooms, the room's members, the user's rooms, the room's
//	      message counter, history and messages
//	ARGV: room, user id, maxRooms, maxRoomsPerUser
var joinScript = rueidis.NewLuaScript(`
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 and redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[4]) then
  return 'too_many_joined'
end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    return 'too_many_rooms'
  end
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
return 'joined'
`)

// leaveScript leaves a room and deletes it, history and all, if that left
// it empty and it is not a default room; it returns 1 if the room no longer
// exists. One step, so that a join cannot come between the count and the
// deletion.
//
//	KEYS: chat:rooms, the room's members, the user's rooms, the room's
//	      message counter, history and messages
//	ARGV: room, user id, "1" to keep the room when empty
var leaveScript = rueidis.NewLuaScript(`
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[1])
if ARGV[3] == '1' or redis.call('SCARD', KEYS[2]) > 0 then
  return 0
end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
return 1
`)

// join adds user id to a room, creating the room if there is none. It
// returns errTooManyRooms if creating it would pass maxRooms and
// errTooManyJoined if the user is in maxRoomsPerUser rooms already.
func (s store) join(ctx context.Context, room, id string) error {
	res, err := joinScript.Exec(ctx, s.rc, roomScriptKeys(room, id),
		[]string{room, id, strconv.Itoa(maxRooms), strconv.Itoa(maxRoomsPerUser)}).ToString()
	switch {
	case err != nil:
		return err
	case res == "too_many_rooms":
		return errTooManyRooms
	case res == "too_many_joined":
		return errTooManyJoined
	}
	return nil
}

// leave takes user id out of a room and reports whether the room is gone.
func (s store) leave(ctx context.Context, room, id string) (deleted bool, err error) {
	keep := "0"
	if slices.Contains(defaultRoomNames(), room) {
		keep = "1"
	}
	n, err := leaveScript.Exec(ctx, s.rc, roomScriptKeys(room, id), []string{room, id, keep}).AsInt64()
	return n == 1, err
}

// roomScriptKeys are the KEYS of joinScript and leaveScript.
func roomScriptKeys(room, id string) []string {
	tl := roomTimeline(room)
	return []string{keyPrefix + "rooms", roomKey(room, "members"), keyPrefix + "user:" + id + ":rooms", tl.seq, tl.ids, tl.msgs}
}

// A timeline is a capped message history that pages backwards: a room's or
// a private conversation's. Message ids come from a per-timeline counter,
// zero-padded so that they sort as strings in the order they were issued,
// even within one millisecond.
type timeline struct{ seq, ids, msgs string }

func roomTimeline(room string) timeline {
	return timeline{seq: roomKey(room, "seq"), ids: roomKey(room, "hist"), msgs: roomKey(room, "msg")}
}

// dmTimeline is the conversation of two users, the same whichever sends.
func dmTimeline(a, b string) timeline {
	if b < a {
		a, b = b, a
	}
	p := keyPrefix + "dm:" + a + ":" + b + ":"
	return timeline{seq: p + "seq", ids: p + "hist", msgs: p + "msg"}
}

func (s store) nextID(ctx context.Context, tl timeline) (string, error) {
	n, err := s.do(ctx, s.b().Incr().Key(tl.seq).Build()).AsInt64()
	return fmt.Sprintf("%016d", n), err
}

// add appends message id (v as JSON) and drops the oldest messages beyond
// historyCap.
func (s store) add(ctx context.Context, tl timeline, id string, v any) error {
	b, _ := json.Marshal(v)
	res := s.rc.DoMulti(ctx,
		s.b().Hset().Key(tl.msgs).FieldValue().FieldValue(id, string(b)).Build(),
		s.b().Zadd().Key(tl.ids).ScoreMember().ScoreMember(0, id).Build(),
		s.b().Zcard().Key(tl.ids).Build())
	if err := firstErr(res); err != nil {
		return err
	}
	n, _ := res[2].AsInt64()
	if n <= historyCap {
		return nil
	}
	dropped, err := s.do(ctx, s.b().Zpopmin().Key(tl.ids).Count(n-historyCap).Build()).AsZScores()
	if err != nil || len(dropped) == 0 {
		return err
	}
	ids := make([]string, len(dropped))
	for i, z := range dropped {
		ids[i] = z.Member
	}
	return s.do(ctx, s.b().Hdel().Key(tl.msgs).Field(ids...).Build()).Error()
}

// page returns up to limit messages older than before (all if empty),
// oldest first, and whether there are older ones.
func page[M any](ctx context.Context, s store, tl timeline, before string, limit int) ([]M, bool, error) {
	max := "+"
	if before != "" {
		max = "(" + before
	}
	ids, err := s.do(ctx, s.b().Zrevrangebylex().Key(tl.ids).Max(max).Min("-").
		Limit(0, int64(limit+1)).Build()).AsStrSlice()
	if err != nil {
		return nil, false, err
	}
	more := len(ids) > limit
	if more {
		ids = ids[:limit]
	}
	out := []M{}
	if len(ids) == 0 {
		return out, false, nil
	}
	vals, err := s.do(ctx, s.b().Hmget().Key(tl.msgs).Field(ids...).Build()).ToArray()
	if err != nil {
		return nil, false, err
	}
	for i := len(vals) - 1; i >= 0; i-- {
		str, err := vals[i].ToString()
		var m M
		if err != nil || json.Unmarshal([]byte(str), &m) != nil {
			continue // recalled meanwhile
		}
		out = append(out, m)
	}
	return out, more, nil
}

func (s store) newMessageID(ctx context.Context, room string) (string, error) {
	return s.nextID(ctx, roomTimeline(room))
}

func (s store) addMessage(ctx context.Context, m roomMessage) error {
	return s.add(ctx, roomTimeline(m.Room), m.MsgID, m)
}

func (s store) history(ctx context.Context, room, before string, limit int) ([]roomMessage, bool, error) {
	return page[roomMessage](ctx, s, roomTimeline(room), before, limit)
}

func (s store) message(ctx context.Context, room, msgID string) (roomMessage, error) {
	var m roomMessage
	str, err := s.do(ctx, s.b().Hget().Key(roomTimeline(room).msgs).Field(msgID).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return m, errNotFound
	}
	if err != nil {
		return m, err
	}
	return m, json.Unmarshal([]byte(str), &m)
}

// removeMessage deletes a message and reports whether it was there, so that
// two recalls of one message do not both succeed.
func (s store) removeMessage(ctx context.Context, room, msgID string) (bool, error) {
	tl := roomTimeline(room)
	res := s.rc.DoMulti(ctx,
		s.b().Zrem().Key(tl.ids).Member(msgID).Build(),
		s.b().Hdel().Key(tl.msgs).Field(msgID).Build())
	if err := firstErr(res); err != nil {
		return false, err
	}
	n, _ := res[0].AsInt64()
	return n > 0, nil
}

// addDirect gives m its id in the conversation of m.From and m.To, keeps it
// in that history and moves the conversation to the top of both users'
// lists.
func (s store) addDirect(ctx context.Context, m *directMessage) error {
	tl := dmTimeline(m.From, m.To)
	id, err := s.nextID(ctx, tl)
	if err != nil {
		return err
	}
	m.MsgID = id
	if err := s.add(ctx, tl, id, m); err != nil {
		return err
	}
	var cmds rueidis.Commands
	for _, pair := range [][2]string{{m.From, m.To}, {m.To, m.From}} {
		key := keyPrefix + "user:" + pair[0] + ":dms"
		cmds = append(cmds,
			s.b().Zadd().Key(key).ScoreMember().ScoreMember(float64(m.TS), pair[1]).Build(),
			s.b().Zremrangebyrank().Key(key).Start(0).Stop(-conversationCap-1).Build())
	}
	return firstErr(s.rc.DoMulti(ctx, cmds...))
}

func (s store) directHistory(ctx context.Context, a, b, before string, limit int) ([]directMessage, bool, error) {
	return page[directMessage](ctx, s, dmTimeline(a, b), before, limit)
}

// conversation is one entry of a user's private conversations.
type conversation struct {
	ID     string `json:"id"` // the other user
	Nick   string `json:"nick"`
	LastTS int64  `json:"lastTs"` // the last message's time, unix ms
}

// conversations returns id's private conversations, newest first.
func (s store) conversations(ctx context.Context, id string) ([]conversation, error) {
	zs, err := s.do(ctx, s.b().Zrevrange().Key(keyPrefix+"user:"+id+":dms").Start(0).Stop(-1).
		Withscores().Build()).AsZScores()
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(zs))
	for i, z := range zs {
		ids[i] = z.Member
	}
	users, err := s.users(ctx, ids)
	if err != nil {
		return nil, err
	}
	nicks := make(map[string]string, len(users))
	for _, u := range users {
		nicks[u.ID] = u.Nick
	}
	out := make([]conversation, 0, len(zs))
	for _, z := range zs {
		if nick, ok := nicks[z.Member]; ok {
			out = append(out, conversation{ID: z.Member, Nick: nick, LastTS: int64(z.Score)})
		}
	}
	return out, nil
}

// keepOffline appends a private message to the receiver's inbox; the oldest
// go beyond inboxCap.
func (s store) keepOffline(ctx context.Context, m directMessage) error {
	b, _ := json.Marshal(m)
	key := keyPrefix + "inbox:" + m.To
	return firstErr(s.rc.DoMulti(ctx,
		s.b().Rpush().Key(key).Element(string(b)).Build(),
		s.b().Ltrim().Key(key).Start(-inboxCap).Stop(-1).Build()))
}

// takeInbox removes and returns up to n kept messages, oldest first. Each
// message is handed out once, however many callers race.
func (s store) takeInbox(ctx context.Context, id string, n int64) ([]directMessage, error) {
	vals, err := s.do(ctx, s.b().Lpop().Key(keyPrefix+"inbox:"+id).Count(n).Build()).AsStrSlice()
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]directMessage, 0, len(vals))
	for _, v := range vals {
		var m directMessage
		if json.Unmarshal([]byte(v), &m) == nil {
			out = append(out, m)
		}
	}
	return out, nil
}

// returnToInbox puts messages that could not be delivered back in front.
func (s store) returnToInbox(ctx context.Context, id string, msgs []directMessage) error {
	if len(msgs) == 0 {
		return nil
	}
	els := make([]string, 0, len(msgs))
	for i := len(msgs) - 1; i >= 0; i-- { // LPUSH reverses, so push newest first
		b, _ := json.Marshal(msgs[i])
		els = append(els, string(b))
	}
	return s.do(ctx, s.b().Lpush().Key(keyPrefix+"inbox:"+id).Element(els...).Build()).Error()
}

func roomKey(room, part string) string { return keyPrefix + "room:" + room + ":" + part }

func firstErr(rs []rueidis.RedisResult) error {
	for _, r := range rs {
		if err := r.Error(); err != nil && !rueidis.IsRedisNil(err) {
			return err
		}
	}
	return nil
}
