package main

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestSignInAndSession(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.wantError("GET", "/api/me", nil, http.StatusUnauthorized, "signed_out")

	status, _ := b.do("POST", "/api/signin", map[string]string{"nick": "Alice"})
	if status != http.StatusOK {
		t.Fatalf("signin: %d", status)
	}
	var me user
	b.mustDo("GET", "/api/me", nil, http.StatusOK, &me)
	if me.Nick != "Alice" || !strings.HasPrefix(me.ID, "u_") {
		t.Fatalf("me = %+v", me)
	}

	// The nickname is the account: signing in again, in any case, is the same user.
	again := e.signIn("alice")
	if again.user.ID != me.ID || again.user.Nick != "Alice" {
		t.Fatalf("second sign-in = %+v, want %+v", again.user, me)
	}

	b.mustDo("POST", "/api/signout", nil, http.StatusNoContent, nil)
	b.wantError("GET", "/api/me", nil, http.StatusUnauthorized, "signed_out")
	b.wantError("POST", "/api/connect", nil, http.StatusUnauthorized, "signed_out")
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
	f := sa.next("bob's presence", func(f frame) bool { return f.data()["nick"] == "bob" })
	if d := f.data(); f.Type != "broadcast" || d["kind"] != "presence" || d["online"] != true {
		t.Fatalf("presence frame %+v", f)
	}
	sb.close()
	sa.next("bob offline", func(f frame) bool { d := f.data(); return d["nick"] == "bob" && d["online"] == false })
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
	if d := f.data(); f.ID != res.ID || f.From != a.user.ID || d["text"] != "hi bob" || d["nick"] != "alice" {
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
		d := f.data()
		if f.From != a.user.ID || d["text"] != fmt.Sprint("while you were out ", i) || d["offline"] != true {
			t.Fatalf("kept message %d = %+v", i, f)
		}
	}
	// Delivered once: a second connect gets nothing more.
	sb.close()
	e.waitOnline(b.user.ID, false)
	b2.connect().none("a second delivery", 300*time.Millisecond, kind("dm"))
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
	if got := rooms.get("lobby"); got != (roomInfo{Name: "lobby", Members: 2, Online: 1, Joined: true}) {
		t.Fatalf("lobby = %+v", got)
	}
	if got := rooms.get("new-room"); got != (roomInfo{Name: "new-room", Members: 1, Online: 0, Joined: false}) {
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
		if f.Type != "channel" || f.Channel != "room.lobby" || f.data()["msgId"] != m.MsgID {
			t.Fatalf("frame %+v", f)
		}
	}
	sc.none("a message for a room carol is not in", 200*time.Millisecond, kind("chat"))

	// Leaving stops delivery at once.
	b.mustDo("POST", "/api/rooms/lobby/leave", nil, http.StatusNoContent, nil)
	a.mustDo("POST", "/api/rooms/lobby/messages", map[string]string{"text": "bob left"}, http.StatusCreated, nil)
	sa.next("the second message", func(f frame) bool { return f.data()["text"] == "bob left" })
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
	if d := f.data(); d["msgId"] != m.MsgID || d["room"] != "lobby" {
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
		"/":              "text/html",
		"/app.js":        "text/javascript",
		"/imclient.js":   "text/javascript",
		"/imclient.d.ts": "",
		"/style.css":     "text/css",
	} {
		res, err := http.Get(e.base + path)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), want) || buf.Len() == 0 {
			t.Errorf("%s: %d %q", path, res.StatusCode, res.Header.Get("Content-Type"))
		}
		if res.Header.Get("Content-Security-Policy") == "" {
			t.Errorf("%s: no CSP", path)
		}
	}
}
