package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestSignInAndSession(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	// Signed out is an answer, not an error: a page asks on every load.
	var me meInfo
	b.mustDo("GET", "/api/me", nil, http.StatusOK, &me)
	if me != (meInfo{}) {
		t.Fatalf("signed-out me = %+v", me)
	}

	status, _ := b.do("POST", "/api/signin", map[string]string{"nick": "Alice"})
	if status != http.StatusOK {
		t.Fatalf("signin: %d", status)
	}
	b.mustDo("GET", "/api/me", nil, http.StatusOK, &me)
	if !me.SignedIn || me.Nick != "Alice" || !strings.HasPrefix(me.ID, "u_") {
		t.Fatalf("me = %+v", me)
	}

	// The nickname is the account: signing in again, in any case, is the same user.
	again := e.signIn("alice")
	if again.user.ID != me.ID || again.user.Nick != "Alice" {
		t.Fatalf("second sign-in = %+v, want %+v", again.user, me)
	}

	b.mustDo("POST", "/api/signout", nil, http.StatusNoContent, nil)
	me = meInfo{}
	b.mustDo("GET", "/api/me", nil, http.StatusOK, &me)
	if me != (meInfo{}) {
		t.Fatalf("me after sign-out = %+v", me)
	}
	b.wantError("POST", "/api/connect", nil, http.StatusUnauthorized, "signed_out")
	b.wantError("GET", "/api/dms", nil, http.StatusUnauthorized, "signed_out")

	// A session that expired (or never existed) reads as signed out too.
	stale := e.browser()
	stale.hc.Jar.SetCookies(mustParseURL(t, e.base), []*http.Cookie{{Name: sessionCookie, Value: "no-such-session"}})
	me = meInfo{}
	stale.mustDo("GET", "/api/me", nil, http.StatusOK, &me)
	if me.SignedIn {
		t.Fatalf("unknown session: me = %+v", me)
	}
	if left := stale.hc.Jar.Cookies(mustParseURL(t, e.base)); len(left) != 0 {
		t.Fatalf("the unknown session's cookie was not cleared: %v", left)
	}
}

func TestSessionCookieFlags(t *testing.T) {
	e := newEnv(t)
	res, err := http.Post(e.base+"/api/signin", "application/json", strings.NewReader(`{"nick":"bob"}`))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	cookies := res.Cookies()
	if len(cookies) != 1 {
		t.Fatalf("cookies = %v", cookies)
	}
	c := cookies[0]
	if c.Name != sessionCookie || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || len(c.Value) < 22 {
		t.Fatalf("session cookie = %+v", c)
	}
}

func TestInputValidation(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	for _, nick := range []string{"", "has space", strings.Repeat("x", 25), "semi;colon", "<b>"} {
		b.wantError("POST", "/api/signin", map[string]string{"nick": nick}, http.StatusBadRequest, "bad_nick")
	}
	b.wantError("POST", "/api/signin", map[string]string{"nick": "ok", "admin": "1"}, http.StatusBadRequest, "bad_json")
	b.wantError("POST", "/api/signin", map[string]string{"nick": strings.Repeat("x", 20<<10)}, http.StatusRequestEntityTooLarge, "too_large")

	// A form post is refused: the API only takes JSON.
	req, _ := http.NewRequest("POST", e.base+"/api/signin", strings.NewReader("nick=alice"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnsupportedMediaType {
		t.Fatalf("form post: %d, want 415", res.StatusCode)
	}

	a := e.signIn("alice")
	e.signIn("bob")
	a.wantError("POST", "/api/messages", map[string]string{"to": "bob", "text": "   "}, http.StatusBadRequest, "bad_text")
	a.wantError("POST", "/api/messages", map[string]string{"to": "bob", "text": strings.Repeat("é", 2001)}, http.StatusBadRequest, "bad_text")
	a.wantError("POST", "/api/messages", map[string]string{"to": "bob", "text": "bell\a"}, http.StatusBadRequest, "bad_text")
	a.wantError("POST", "/api/messages", map[string]string{"to": "no one", "text": "hi"}, http.StatusBadRequest, "bad_nick")
	a.wantError("GET", "/api/rooms/Bad.Room/messages", nil, http.StatusBadRequest, "bad_room")
	a.wantError("GET", "/api/nothing", nil, http.StatusNotFound, "not_found")
	a.wantError("PUT", "/api/rooms", nil, http.StatusMethodNotAllowed, "method_not_allowed")
}

func TestCrossOriginRequestsRefused(t *testing.T) {
	e := newEnv(t)
	a := e.signIn("alice")
	a.wantError("POST", "/api/rooms/lobby/join", nil, http.StatusForbidden, "cross_origin", "Origin", "https://evil.example")
	a.wantError("POST", "/api/rooms/lobby/join", nil, http.StatusForbidden, "cross_origin", "Sec-Fetch-Site", "cross-site")
	a.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil, "Origin", e.base, "Sec-Fetch-Site", "same-origin")
	// Reads stay allowed: they change nothing.
	a.mustDo("GET", "/api/rooms", nil, http.StatusOK, nil, "Sec-Fetch-Site", "cross-site")
}

func TestConnectAndOnlineList(t *testing.T) {
	e := newEnv(t)
	a, b := e.signIn("alice"), e.signIn("bob")

	var res struct{ URL string }
	a.mustDo("POST", "/api/connect", nil, http.StatusOK, &res)
	if !strings.HasPrefix(res.URL, e.node.PublicURL()+"?token=") {
		t.Fatalf("url %q is not the node's %q", res.URL, e.node.PublicURL())
	}

	sa := a.connect()
	var online struct{ Users []user }
	a.mustDo("GET", "/api/online", nil, http.StatusOK, &online)
	if len(online.Users) != 1 || online.Users[0] != a.user {
		t.Fatalf("online = %+v", online.Users)
	}

	// The online list on a page follows the broker's events.
	sb := b.connect()
	f := sa.next("bob's presence", func(f frame) bool { return f.DataMap()["nick"] == "bob" })
	if d := f.DataMap(); f.Type != "broadcast" || d["kind"] != "presence" || d["online"] != true {
		t.Fatalf("presence frame %+v", f)
	}
	sb.close()
	sa.next("bob offline", func(f frame) bool { d := f.DataMap(); return d["nick"] == "bob" && d["online"] == false })
	e.waitOnline(b.user.ID, false)
	a.mustDo("GET", "/api/online", nil, http.StatusOK, &online)
	if len(online.Users) != 1 {
		t.Fatalf("online after bob left = %+v", online.Users)
	}
}

func TestDirectMessageWithReceipt(t *testing.T) {
	e := newEnv(t)
	a, b := e.signIn("alice"), e.signIn("bob")
	sa, sb := a.connect(), b.connect()

	var res struct {
		Status string
		ID     string
	}
	a.mustDo("POST", "/api/messages", map[string]string{"to": "BOB", "text": "hi bob"}, http.StatusOK, &res)
	if res.Status != "sent" || res.ID == "" {
		t.Fatalf("send = %+v", res)
	}
	f := sb.next("the message", kind("dm"))
	if d := f.DataMap(); f.ID != res.ID || f.From != a.user.ID || d["text"] != "hi bob" || d["nick"] != "alice" {
		t.Fatalf("bob got %+v", f)
	}
	r := sa.next("the receipt", func(f frame) bool { return f.Type == "receipt" })
	if r.ID != res.ID || string(r.To) != `"`+b.user.ID+`"` || r.Status != "delivered" {
		t.Fatalf("receipt %+v", r)
	}

	a.wantError("POST", "/api/messages", map[string]string{"to": "carol", "text": "hi"}, http.StatusNotFound, "no_user")
	a.wantError("POST", "/api/messages", map[string]string{"to": "alice", "text": "hi"}, http.StatusBadRequest, "to_self")
}

func TestOfflineMessageDeliveredOnConnect(t *testing.T) {
	e := newEnv(t)
	a, b := e.signIn("alice"), e.signIn("bob")
	a.connect()

	var res struct{ Status string }
	for i := range 3 {
		a.mustDo("POST", "/api/messages", map[string]string{"to": "bob", "text": fmt.Sprint("while you were out ", i)}, http.StatusAccepted, &res)
		if res.Status != "stored" {
			t.Fatalf("send to offline bob = %+v", res)
		}
	}

	// Bob signs in again later (a new browser) and connects.
	b2 := e.signIn("bob")
	if b2.user != b.user {
		t.Fatal("bob is a different user")
	}
	sb := b2.connect()
	for i := range 3 {
		f := sb.next("a kept message", kind("dm"))
		d := f.DataMap()
		if f.From != a.user.ID || d["text"] != fmt.Sprint("while you were out ", i) || d["offline"] != true {
			t.Fatalf("kept message %d = %+v", i, f)
		}
	}
	// Delivered once: a second connect gets nothing more.
	sb.close()
	e.waitOnline(b.user.ID, false)
	b2.connect().none("a second delivery", 300*time.Millisecond, kind("dm"))
}

// dmPage is GET /api/dms/{nick}/messages's answer.
type dmPage struct {
	With     user
	Messages []directMessage
	More     bool
}

func (p dmPage) texts() string {
	var s []string
	for _, m := range p.Messages {
		s = append(s, m.Text)
	}
	return strings.Join(s, ",")
}

// Private messages have a history, like rooms: a new browser session finds
// its conversations and their messages.
func TestDirectMessageHistory(t *testing.T) {
	e := newEnv(t)
	a, b, c := e.signIn("alice"), e.signIn("bob"), e.signIn("carol")
	a.connect()

	type sent struct {
		Status  string
		Message directMessage
	}
	var kept, live sent
	a.mustDo("POST", "/api/messages", map[string]string{"to": "bob", "text": "first"}, http.StatusAccepted, &kept)
	if !msgIDPattern.MatchString(kept.Message.MsgID) {
		t.Fatalf("kept message %+v has no message id", kept.Message)
	}
	sb := b.connect()
	// The pushed copies carry the history's id, so a page can merge both.
	if f := sb.next("the kept message", kind("dm")); f.DataMap()["msgId"] != kept.Message.MsgID {
		t.Fatalf("kept frame %+v, want msgId %s", f.DataMap(), kept.Message.MsgID)
	}
	a.mustDo("POST", "/api/messages", map[string]string{"to": "bob", "text": "second"}, http.StatusOK, &live)
	if f := sb.next("the live message", kind("dm")); f.DataMap()["msgId"] != live.Message.MsgID || live.Message.MsgID <= kept.Message.MsgID {
		t.Fatalf("live frame %+v, want msgId %s after %s", f.DataMap(), live.Message.MsgID, kept.Message.MsgID)
	}
	b.mustDo("POST", "/api/messages", map[string]string{"to": "alice", "text": "third"}, http.StatusOK, nil)

	// Bob in a new browser: nothing in memory.
	b2 := e.signIn("bob")
	var convs struct{ Conversations []conversation }
	b2.mustDo("GET", "/api/dms", nil, http.StatusOK, &convs)
	if len(convs.Conversations) != 1 || convs.Conversations[0].ID != a.user.ID || convs.Conversations[0].Nick != "alice" || convs.Conversations[0].LastTS == 0 {
		t.Fatalf("bob's conversations = %+v", convs.Conversations)
	}
	var p dmPage
	b2.mustDo("GET", "/api/dms/ALICE/messages", nil, http.StatusOK, &p)
	if p.With != a.user || p.texts() != "first,second,third" || p.More {
		t.Fatalf("bob's history with alice = %+v", p)
	}
	if first := p.Messages[0]; first.From != a.user.ID || first.To != b.user.ID || !first.Offline || p.Messages[1].Offline {
		t.Fatalf("history %+v: want the first kept while bob was offline, the second not", p.Messages)
	}
	var mine dmPage
	a.mustDo("GET", "/api/dms/bob/messages", nil, http.StatusOK, &mine)
	if mine.With != b.user || mine.texts() != p.texts() {
		t.Fatalf("alice's history with bob = %+v", mine)
	}

	// Pages backwards, as a room's history does.
	b2.mustDo("GET", "/api/dms/alice/messages?limit=2", nil, http.StatusOK, &p)
	if p.texts() != "second,third" || !p.More {
		t.Fatalf("newest page = %s more=%v", p.texts(), p.More)
	}
	b2.mustDo("GET", "/api/dms/alice/messages?limit=2&before="+p.Messages[0].MsgID, nil, http.StatusOK, &p)
	if p.texts() != "first" || p.More {
		t.Fatalf("older page = %s more=%v", p.texts(), p.More)
	}

	// Newest conversation first; other people's conversations are not shown.
	c.mustDo("POST", "/api/messages", map[string]string{"to": "alice", "text": "hi from carol"}, http.StatusOK, nil)
	a.mustDo("GET", "/api/dms", nil, http.StatusOK, &convs)
	if len(convs.Conversations) != 2 || convs.Conversations[0].Nick != "carol" || convs.Conversations[1].Nick != "bob" {
		t.Fatalf("alice's conversations = %+v", convs.Conversations)
	}
	c.mustDo("GET", "/api/dms/bob/messages", nil, http.StatusOK, &p)
	if p.With != b.user || len(p.Messages) != 0 || p.Messages == nil {
		t.Fatalf("carol's history with bob = %+v, want an empty list", p)
	}

	// Nicknames may be any letters; the page escapes them in the path.
	z := e.signIn("Zoë")
	a.mustDo("GET", "/api/dms/"+url.PathEscape("zoË")+"/messages", nil, http.StatusOK, &p)
	if p.With != z.user {
		t.Fatalf("history with Zoë names %+v", p.With)
	}

	a.wantError("GET", "/api/dms/nobody/messages", nil, http.StatusNotFound, "no_user")
	a.wantError("GET", "/api/dms/alice/messages", nil, http.StatusBadRequest, "to_self")
	a.wantError("GET", "/api/dms/semi;colon/messages", nil, http.StatusBadRequest, "bad_nick")
	a.wantError("GET", "/api/dms/bob/messages?limit=0", nil, http.StatusBadRequest, "bad_limit")
	a.wantError("GET", "/api/dms/bob/messages?before=x", nil, http.StatusBadRequest, "bad_before")
}

// roomCounts matches a broadcast that carries the counts of room.
func roomCounts(room string, members, online int) func(frame) bool {
	return func(f frame) bool {
		var d struct {
			Rooms []roomCount `json:"rooms"`
		}
		if f.Type != "broadcast" || json.Unmarshal(f.Data, &d) != nil {
			return false
		}
		return slices.Contains(d.Rooms, roomCount{Name: room, Members: int64(members), Online: online})
	}
}

// The room list shows every room's counts, also of rooms the user did not
// join, whose channel events never reach the user's page.
func TestRoomCountsReachEveryPage(t *testing.T) {
	e := newEnv(t)
	a, b, c := e.signIn("alice"), e.signIn("bob"), e.signIn("carol")
	sc := c.connect()
	sa := a.connect()

	a.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil)
	sc.next("lobby 1/1 after alice joined", roomCounts("lobby", 1, 1))
	b.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil)
	sc.next("lobby 0/2 after offline bob joined", roomCounts("lobby", 2, 1))

	// Presence moves the online counts of the user's rooms.
	sb := b.connect()
	sc.next("lobby 2/2 after bob connected", roomCounts("lobby", 2, 2))
	sa.close()
	sc.next("lobby 1/2 after alice went offline", roomCounts("lobby", 2, 1))
	sb.close()
	sc.next("lobby 0/2 after bob went offline", roomCounts("lobby", 2, 0))

	// A new room shows up on every page, and so does its end.
	b.mustDo("POST", "/api/rooms/new-room/join", nil, http.StatusOK, nil)
	sc.next("the new room", roomCounts("new-room", 1, 0))
	b.mustDo("POST", "/api/rooms/new-room/leave", nil, http.StatusNoContent, nil)
	sc.next("the new room deleted after bob left", roomDeleted("new-room"))
}

type roomList struct {
	Rooms []roomInfo
}

func (r roomList) get(name string) roomInfo {
	for _, x := range r.Rooms {
		if x.Name == name {
			return x
		}
	}
	return roomInfo{}
}

func TestRoomsJoinLeaveListMembers(t *testing.T) {
	e := newEnv(t)
	a, b := e.signIn("alice"), e.signIn("bob")
	var rooms roomList
	a.mustDo("GET", "/api/rooms", nil, http.StatusOK, &rooms)
	if len(rooms.Rooms) != 2 || rooms.get("lobby").Name == "" || rooms.get("random").Name == "" {
		t.Fatalf("default rooms = %+v", rooms)
	}

	a.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil)
	a.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil) // idempotent
	b.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil)
	b.mustDo("POST", "/api/rooms/new-room/join", nil, http.StatusOK, nil) // creates it
	a.connect()

	a.mustDo("GET", "/api/rooms", nil, http.StatusOK, &rooms)
	if got := rooms.get("lobby"); got != (roomInfo{roomCount{Name: "lobby", Members: 2, Online: 1}, true}) {
		t.Fatalf("lobby = %+v", got)
	}
	if got := rooms.get("new-room"); got != (roomInfo{roomCount{Name: "new-room", Members: 1, Online: 0}, false}) {
		t.Fatalf("new-room = %+v", got)
	}

	var members struct{ Members []memberInfo }
	a.mustDo("GET", "/api/rooms/lobby/members", nil, http.StatusOK, &members)
	want := []memberInfo{{a.user.ID, "alice", true}, {b.user.ID, "bob", false}}
	if fmt.Sprint(members.Members) != fmt.Sprint(want) {
		t.Fatalf("members = %+v, want %+v", members.Members, want)
	}

	b.mustDo("POST", "/api/rooms/lobby/leave", nil, http.StatusNoContent, nil)
	a.mustDo("GET", "/api/rooms/lobby/members", nil, http.StatusOK, &members)
	if len(members.Members) != 1 {
		t.Fatalf("members after leave = %+v", members.Members)
	}
	b.wantError("GET", "/api/rooms/lobby/messages", nil, http.StatusForbidden, "not_member")
	b.wantError("POST", "/api/rooms/lobby/messages", map[string]string{"text": "hi"}, http.StatusForbidden, "not_member")
}

func TestRoomMessagesReachOnlineMembers(t *testing.T) {
	e := newEnv(t)
	a, b, c := e.signIn("alice"), e.signIn("bob"), e.signIn("carol")
	for _, u := range []*browser{a, b} {
		u.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil)
	}
	sa, sb, sc := a.connect(), b.connect(), c.connect()

	var m roomMessage
	a.mustDo("POST", "/api/rooms/lobby/messages", map[string]string{"text": "hello room"}, http.StatusCreated, &m)
	if m.Text != "hello room" || m.From != a.user.ID || m.Room != "lobby" || !msgIDPattern.MatchString(m.MsgID) {
		t.Fatalf("message = %+v", m)
	}
	for _, s := range []*socket{sa, sb} {
		f := s.next("the room message", kind("chat"))
		if f.Type != "channel" || f.Channel != "room.lobby" || f.DataMap()["msgId"] != m.MsgID {
			t.Fatalf("frame %+v", f)
		}
	}
	sc.none("a message for a room carol is not in", 200*time.Millisecond, kind("chat"))

	// Leaving stops delivery at once.
	b.mustDo("POST", "/api/rooms/lobby/leave", nil, http.StatusNoContent, nil)
	a.mustDo("POST", "/api/rooms/lobby/messages", map[string]string{"text": "bob left"}, http.StatusCreated, nil)
	sa.next("the second message", func(f frame) bool { return f.DataMap()["text"] == "bob left" })
	sb.none("a message after leaving", 200*time.Millisecond, kind("chat"))
}

func TestRoomHistoryPaging(t *testing.T) {
	e := newEnv(t)
	a := e.signIn("alice")
	a.mustDo("POST", "/api/rooms/random/join", nil, http.StatusOK, nil)
	for i := range 5 {
		a.mustDo("POST", "/api/rooms/random/messages", map[string]string{"text": fmt.Sprint("m", i)}, http.StatusCreated, nil)
	}
	type page struct {
		Messages []roomMessage
		More     bool
	}
	texts := func(p page) string {
		var s []string
		for _, m := range p.Messages {
			s = append(s, m.Text)
		}
		return strings.Join(s, ",")
	}
	var p page
	a.mustDo("GET", "/api/rooms/random/messages?limit=2", nil, http.StatusOK, &p)
	if texts(p) != "m3,m4" || !p.More {
		t.Fatalf("newest page = %s more=%v", texts(p), p.More)
	}
	a.mustDo("GET", "/api/rooms/random/messages?limit=2&before="+p.Messages[0].MsgID, nil, http.StatusOK, &p)
	if texts(p) != "m1,m2" || !p.More {
		t.Fatalf("second page = %s more=%v", texts(p), p.More)
	}
	a.mustDo("GET", "/api/rooms/random/messages?limit=2&before="+p.Messages[0].MsgID, nil, http.StatusOK, &p)
	if texts(p) != "m0" || p.More {
		t.Fatalf("last page = %s more=%v", texts(p), p.More)
	}
	a.mustDo("GET", "/api/rooms/random/messages", nil, http.StatusOK, &p)
	if len(p.Messages) != 5 || p.More {
		t.Fatalf("default page = %s", texts(p))
	}
	a.wantError("GET", "/api/rooms/random/messages?limit=0", nil, http.StatusBadRequest, "bad_limit")
	a.wantError("GET", "/api/rooms/random/messages?limit=101", nil, http.StatusBadRequest, "bad_limit")
	a.wantError("GET", "/api/rooms/random/messages?before=x", nil, http.StatusBadRequest, "bad_before")
}

func TestRecall(t *testing.T) {
	e := newEnv(t)
	a, b := e.signIn("alice"), e.signIn("bob")
	for _, u := range []*browser{a, b} {
		u.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil)
	}
	sb := b.connect()
	var m roomMessage
	a.mustDo("POST", "/api/rooms/lobby/messages", map[string]string{"text": "oops"}, http.StatusCreated, &m)
	path := "/api/rooms/lobby/messages/" + m.MsgID

	b.wantError("DELETE", path, nil, http.StatusForbidden, "not_yours")
	a.mustDo("DELETE", path, nil, http.StatusNoContent, nil)
	f := sb.next("the recall", kind("recall"))
	if d := f.DataMap(); d["msgId"] != m.MsgID || d["room"] != "lobby" {
		t.Fatalf("recall frame %+v", f)
	}
	var p struct{ Messages []roomMessage }
	b.mustDo("GET", "/api/rooms/lobby/messages", nil, http.StatusOK, &p)
	if len(p.Messages) != 0 {
		t.Fatalf("history after recall = %+v", p.Messages)
	}
	a.wantError("DELETE", path, nil, http.StatusNotFound, "no_message")
	a.wantError("DELETE", "/api/rooms/lobby/messages/not-an-id", nil, http.StatusBadRequest, "bad_message_id")

	// Only within two minutes.
	a.mustDo("POST", "/api/rooms/lobby/messages", map[string]string{"text": "old"}, http.StatusCreated, &m)
	e.clock.Store(int64(recallWindow + time.Second))
	a.wantError("DELETE", "/api/rooms/lobby/messages/"+m.MsgID, nil, http.StatusConflict, "too_late")
}

// The broker ends channel membership when a client's last socket closes;
// the service restores it when the user connects again.
func TestRoomsRejoinedOnReconnect(t *testing.T) {
	e := newEnv(t)
	a, b := e.signIn("alice"), e.signIn("bob")
	for _, u := range []*browser{a, b} {
		u.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil)
	}
	sb := b.connect()
	sb.close()
	e.waitOnline(b.user.ID, false)

	sb = b.connect()
	a.mustDo("POST", "/api/rooms/lobby/messages", map[string]string{"text": "welcome back"}, http.StatusCreated, nil)
	sb.next("a room message after reconnecting", kind("chat"))
}

func TestAdminKick(t *testing.T) {
	e := newEnv(t)
	a, b := e.signIn("alice"), e.signIn("bob")
	sb := b.connect()

	body := map[string]string{"nick": "bob"}
	a.wantError("POST", "/api/admin/kick", body, http.StatusUnauthorized, "admin_only")
	a.wantError("POST", "/api/admin/kick", body, http.StatusForbidden, "admin_only", "Authorization", "Bearer wrong")
	a.wantError("POST", "/api/admin/kick", map[string]string{"nick": "nobody"}, http.StatusNotFound, "no_user", "Authorization", "Bearer "+testAdminToken)

	var res struct {
		Kicked    user
		WasOnline bool
	}
	a.mustDo("POST", "/api/admin/kick", body, http.StatusOK, &res, "Authorization", "Bearer "+testAdminToken)
	if res.Kicked != b.user || !res.WasOnline {
		t.Fatalf("kick = %+v", res)
	}
	select {
	case code := <-sb.closed:
		if code != websocket.StatusCode(4001) {
			t.Fatalf("close code %d, want 4001", code)
		}
	case <-time.After(waitFor):
		t.Fatal("bob's socket was not closed")
	}
	e.waitOnline(b.user.ID, false)
}

func TestStaticFiles(t *testing.T) {
	e := newEnv(t)
	for path, want := range map[string]string{
		"/":                             "text/html",
		"/app.js":                       "text/javascript",
		"/style.css":                    "text/css",
		"/favicon.svg":                  "image/svg+xml",
		"/favicon.ico":                  "image/svg+xml",
		"/vendor/imclient/imclient.js":  "text/javascript",
		"/vendor/imclient/package.json": "application/json",
	} {
		res, body := get(t, e.base+path)
		if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), want) || len(body) == 0 {
			t.Errorf("%s: %d %q", path, res.StatusCode, res.Header.Get("Content-Type"))
		}
		if res.Header.Get("Content-Security-Policy") == "" {
			t.Errorf("%s: no CSP", path)
		}
	}
}

// The page imports the client by its package name through an inline import
// map, which the CSP allows by hash and nothing else inline.
func TestPageImportMapAndCSP(t *testing.T) {
	e := newEnv(t)
	res, page := get(t, e.base+"/")
	m := regexp.MustCompile(`(?s)<script type="importmap">(.*?)</script>`).FindSubmatch(page)
	if m == nil {
		t.Fatal("index.html declares no import map")
	}
	var importMap struct{ Imports map[string]string }
	if err := json.Unmarshal(m[1], &importMap); err != nil {
		t.Fatalf("import map %q: %v", m[1], err)
	}
	target := importMap.Imports["imclient"]
	if r, _ := get(t, e.base+target); target == "" || r.StatusCode != http.StatusOK {
		t.Fatalf("import map %v: imclient does not resolve to a served file", importMap.Imports)
	}
	sum := sha256.Sum256(m[1])
	csp := res.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'self' 'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'") {
		t.Fatalf("CSP %q does not allow the import map by its hash", csp)
	}
	if strings.Contains(csp, "unsafe-inline") {
		t.Fatalf("CSP %q allows inline code", csp)
	}
	if !bytes.Contains(page, []byte(`<link rel="icon" href="/favicon.svg" type="image/svg+xml">`)) {
		t.Fatal("index.html does not link the icon")
	}
}

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res, body
}

func mustParseURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestSecureCookiesBehindProxy: behind a proxy that ends TLS the request
// has no TLS, and only WEBAPI_SECURE_COOKIES makes the session cookie
// Secure.
func TestSecureCookiesBehindProxy(t *testing.T) {
	e := newEnv(t)
	if c := configFromEnv(func(k string) string { return map[string]string{"WEBAPI_SECURE_COOKIES": "true"}[k] }); !c.SecureCookies {
		t.Fatal("WEBAPI_SECURE_COOKIES=true not read")
	}
	// A cookie jar keeps Secure cookies only for https URLs, so over plain
	// HTTP a Secure cookie is not sent back: read Set-Cookie instead.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/api/signin", strings.NewReader(`{"nick":"proxied"}`))
	req.Header.Set("Content-Type", "application/json")
	e.app.Routes().ServeHTTP(rec, req)
	if h := rec.Header().Get("Set-Cookie"); rec.Code != http.StatusOK || strings.Contains(h, "Secure") {
		t.Fatalf("default, plain HTTP: %d %q, want a cookie without Secure", rec.Code, h)
	}
	e.app.SecureCookies = true
	rec = httptest.NewRecorder()
	req = httptest.NewRequest("POST", "/api/signin", strings.NewReader(`{"nick":"proxied"}`))
	req.Header.Set("Content-Type", "application/json")
	e.app.Routes().ServeHTTP(rec, req)
	if h := rec.Header().Get("Set-Cookie"); rec.Code != http.StatusOK || !strings.Contains(h, "Secure") {
		t.Fatalf("SecureCookies, plain HTTP: %d %q, want a Secure cookie", rec.Code, h)
	}
}
