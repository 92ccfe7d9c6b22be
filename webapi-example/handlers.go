package main

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/imbroker/imbroker/imhelper"
)

const (
	maxTextRunes = 2000
	// maxRooms caps the rooms of the whole service, the default ones
	// included; maxRoomsPerUser caps the rooms one user is in, so that one
	// user cannot take all of them (a room nobody is in is deleted).
	maxRooms        = 100
	maxRoomsPerUser = 10
	roomRule        = "room names are 1-32 characters: lower-case letters, digits, '-' and '_', starting with a letter or digit"
)

var (
	roomPattern  = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)
	msgIDPattern = regexp.MustCompile(`^[0-9]{16}$`)
)

func validRoom(s string) bool { return roomPattern.MatchString(s) }

// readNick reads a nickname from a request (see parseNick); it answers the
// request itself when the nickname is refused.
func readNick(w http.ResponseWriter, s string) (shown, key string, ok bool) {
	shown, key, err := parseNick(s)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_nick", err.Error())
		return "", "", false
	}
	return shown, key, true
}

// cleanText trims a chat text and checks its length; line breaks and tabs
// are kept, other control characters refused.
func cleanText(w http.ResponseWriter, s string) (string, bool) {
	s = strings.TrimSpace(s)
	n := utf8.RuneCountInString(s)
	if n == 0 || n > maxTextRunes {
		writeError(w, http.StatusBadRequest, "bad_text", "text must be 1-2000 characters")
		return "", false
	}
	for _, r := range s {
		if unicode.IsControl(r) && r != '\n' && r != '\t' {
			writeError(w, http.StatusBadRequest, "bad_text", "text contains control characters")
			return "", false
		}
	}
	return s, true
}

func (a *App) signIn(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Nick string `json:"nick"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	shown, key, ok := readNick(w, req.Nick)
	if !ok {
		return
	}
	u, err := a.db.signIn(r.Context(), shown, key)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if old, err := r.Cookie(sessionCookie); err == nil && len(old.Value) <= 64 {
		_ = a.db.endSession(r.Context(), old.Value)
	}
	sid, err := a.db.newSession(r.Context(), u.ID)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: sid, Path: "/",
		MaxAge: int(sessionTTL.Seconds()), HttpOnly: true,
		Secure: a.secureCookie(r), SameSite: http.SameSiteLaxMode,
	})
	writeJSON(w, http.StatusOK, u)
}

func (a *App) signOut(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil && len(c.Value) <= 64 {
		if err := a.db.endSession(r.Context(), c.Value); err != nil {
			a.internalError(w, r, err)
			return
		}
	}
	a.clearSessionCookie(w, r)
	w.WriteHeader(http.StatusNoContent)
}

func (a *App) clearSessionCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: a.secureCookie(r), SameSite: http.SameSiteLaxMode})
}

// secureCookie: the session cookie is Secure when this request came over
// TLS, or always when SecureCookies says TLS ends in front of the service
// (an Ingress or a load balancer), where r.TLS is nil.
func (a *App) secureCookie(r *http.Request) bool { return r.TLS != nil || a.SecureCookies }

// meInfo answers GET /api/me.
type meInfo struct {
	SignedIn bool   `json:"signedIn"`
	ID       string `json:"id,omitempty"`
	Nick     string `json:"nick,omitempty"`
}

// me tells the page who is signed in. Being signed out is a normal answer
// here (200, signedIn false), not an error: every page load asks, and a 401
// would be logged in the browser's console each time. The endpoints that
// need a user still answer 401.
func (a *App) me(w http.ResponseWriter, r *http.Request) {
	u, err := a.sessionUser(r)
	if errors.Is(err, errSessionExpired) {
		a.clearSessionCookie(w, r)
	}
	if signedOut(err) {
		writeJSON(w, http.StatusOK, meInfo{})
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, meInfo{SignedIn: true, ID: u.ID, Nick: u.Nick})
}

// connect returns a fresh one-time WebSocket URL. The page calls it before
// every (re)connect. The user's rooms are joined here, before the socket
// exists, because the broker ends channel membership when a client's last
// socket closes; the online event handler joins them again in case this
// raced with the close of an old socket.
func (a *App) connect(w http.ResponseWriter, r *http.Request) {
	u := currentUser(r)
	rooms, err := a.db.userRooms(r.Context(), u.ID)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if err := a.im.JoinChan(r.Context(), u.ID, roomChans(rooms)...); err != nil {
		a.internalError(w, r, err)
		return
	}
	url, err := a.im.PrevConnectServer(r.Context(), u.ID, u.Nick)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"url": url})
}

func (a *App) online(w http.ResponseWriter, r *http.Request) {
	ids, err := a.im.GetClientListByOnline(r.Context())
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	users, err := a.db.users(r.Context(), ids)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"users": users})
}

// peer resolves the nickname of the other user of a private conversation;
// it answers the request itself when there is none.
func (a *App) peer(w http.ResponseWriter, r *http.Request, nick string) (user, bool) {
	u, ok := a.userByNick(w, r, nick)
	if !ok {
		return user{}, false
	}
	if u.ID == currentUser(r).ID {
		writeError(w, http.StatusBadRequest, "to_self", "you cannot message yourself")
		return user{}, false
	}
	return u, true
}

// userByNick finds the account of a nickname; it answers the request
// itself when the nickname is refused or nobody has signed in as it.
func (a *App) userByNick(w http.ResponseWriter, r *http.Request, s string) (user, bool) {
	shown, key, ok := readNick(w, s)
	if !ok {
		return user{}, false
	}
	u, err := a.db.userByNick(r.Context(), key)
	if errors.Is(err, errNotFound) {
		writeError(w, http.StatusNotFound, "no_user", "nobody has signed in as "+shown)
		return user{}, false
	} else if err != nil {
		a.internalError(w, r, err)
		return user{}, false
	}
	return u, true
}

// sendDirect sends a private message and keeps it in the conversation's
// history first, as sendRoom does. An online receiver gets it through the
// broker at once, and the sender's sockets get a receipt; for an offline
// receiver the service also keeps it in an inbox and pushes it when the
// receiver comes online (see handleEvent).
func (a *App) sendDirect(w http.ResponseWriter, r *http.Request) {
	var req struct {
		To   string `json:"to"` // nickname
		Text string `json:"text"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	text, ok := cleanText(w, req.Text)
	if !ok {
		return
	}
	to, ok := a.peer(w, r, req.To)
	if !ok {
		return
	}
	me := currentUser(r)
	online, err := a.im.HasOnline(r.Context(), to.ID)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	m := directMessage{Kind: "dm", From: me.ID, Nick: me.Nick, To: to.ID, ToNick: to.Nick,
		Text: text, TS: a.now().UnixMilli(), Offline: !online}
	if err := a.db.addDirect(r.Context(), &m); err != nil {
		a.internalError(w, r, err)
		return
	}
	if !online {
		if err := a.db.keepOffline(r.Context(), m); err != nil {
			a.internalError(w, r, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]any{"status": "stored", "message": m})
		return
	}
	// WithEcho shows the message on the sender's other tabs and devices.
	id, err := a.im.SendMessage(r.Context(), me.ID, []string{to.ID}, m, imhelper.WithReceipt(), imhelper.WithEcho())
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "sent", "id": id, "message": m})
}

// listConversations returns the signed-in user's private conversations,
// the most recent first (at most 100), for a page that starts empty.
func (a *App) listConversations(w http.ResponseWriter, r *http.Request) {
	convs, err := a.db.conversations(r.Context(), currentUser(r).ID)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"conversations": convs})
}

// directHistory pages backwards through the conversation with {nick}, as
// roomHistory does through a room, and names the other user. A page also
// uses it to check a nickname before it opens a conversation.
func (a *App) directHistory(w http.ResponseWriter, r *http.Request) {
	before, limit, ok := pageQuery(w, r)
	if !ok {
		return
	}
	other, ok := a.peer(w, r, chi.URLParam(r, "nick"))
	if !ok {
		return
	}
	msgs, more, err := a.db.directHistory(r.Context(), currentUser(r).ID, other.ID, before, limit)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"with": other, "messages": msgs, "more": more})
}

// pageQuery reads ?before=<msgId>&limit=N (default 30, at most 100) of a
// history request; it answers the request itself when they are invalid.
func pageQuery(w http.ResponseWriter, r *http.Request) (before string, limit int, ok bool) {
	q := r.URL.Query()
	before = q.Get("before")
	if before != "" && !msgIDPattern.MatchString(before) {
		writeError(w, http.StatusBadRequest, "bad_before", "before must be a message id")
		return "", 0, false
	}
	limit = 30
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > historyMaxGet {
			writeError(w, http.StatusBadRequest, "bad_limit", "limit must be 1-100")
			return "", 0, false
		}
		limit = n
	}
	return before, limit, true
}

// roomCount is what the room list shows of a room.
type roomCount struct {
	Name    string `json:"name"`
	Members int64  `json:"members"`
	Online  int    `json:"online"` // members with an open socket
}

type roomInfo struct {
	roomCount
	Joined bool `json:"joined"`
}

func (a *App) listRooms(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	names, err := a.db.rooms(ctx)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	counts, err := a.db.memberCounts(ctx, names)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	chans, err := a.im.GetChanList(ctx)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	online := make(map[string]int, len(chans))
	for _, c := range chans {
		online[c.Name] = c.Online
	}
	mine, err := a.db.userRooms(ctx, currentUser(r).ID)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	out := make([]roomInfo, len(names))
	for i, n := range names {
		out[i] = roomInfo{roomCount{Name: n, Members: counts[i], Online: online[chanPrefix+n]}, slices.Contains(mine, n)}
	}
	writeJSON(w, http.StatusOK, map[string]any{"rooms": out})
}

// memberEvent tells a room's open pages that someone joined or left.
type memberEvent struct {
	Kind   string `json:"kind"` // "member"
	Room   string `json:"room"`
	ID     string `json:"id"`
	Nick   string `json:"nick"`
	Joined bool   `json:"joined"`
}

// joinRoom adds the user to a room, which it creates if there is none of
// that name. The caps are checked by the same step in Redis that joins.
func (a *App) joinRoom(w http.ResponseWriter, r *http.Request) {
	ctx, u, room := r.Context(), currentUser(r), chi.URLParam(r, "room")
	switch err := a.db.join(ctx, room, u.ID); {
	case errors.Is(err, errTooManyRooms):
		writeError(w, http.StatusConflict, "too_many_rooms", "no more rooms can be created")
		return
	case errors.Is(err, errTooManyJoined):
		writeError(w, http.StatusConflict, "too_many_joined",
			"you are in "+strconv.Itoa(maxRoomsPerUser)+" rooms, the most there may be; leave one first")
		return
	case err != nil:
		a.internalError(w, r, err)
		return
	}
	if err := a.im.JoinChan(ctx, u.ID, chanPrefix+room); err != nil {
		a.internalError(w, r, err)
		return
	}
	a.announce(r, room, memberEvent{Kind: "member", Room: room, ID: u.ID, Nick: u.Nick, Joined: true})
	a.broadcastCounts(ctx, room, false)
	writeJSON(w, http.StatusOK, map[string]string{"room": room})
}

// leaveRoom takes the user out of a room; the room is deleted, history and
// all, when that leaves it empty, unless it is a default room.
func (a *App) leaveRoom(w http.ResponseWriter, r *http.Request) {
	ctx, u, room := r.Context(), currentUser(r), chi.URLParam(r, "room")
	deleted, err := a.db.leave(ctx, room, u.ID)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if err := a.im.LeaveChan(ctx, u.ID, chanPrefix+room); err != nil {
		a.internalError(w, r, err)
		return
	}
	a.announce(r, room, memberEvent{Kind: "member", Room: room, ID: u.ID, Nick: u.Nick, Joined: false})
	a.broadcastCounts(ctx, room, deleted)
	w.WriteHeader(http.StatusNoContent)
}

// announce sends a room event; a lost one only leaves a count stale until
// the next reload, so failures are logged, not returned.
func (a *App) announce(r *http.Request, room string, payload any) {
	if _, err := a.im.SendChanMessage(r.Context(), currentUser(r).ID, chanPrefix+room, payload); err != nil {
		a.log.Warn("failed to announce a room event", "room", room, "err", err)
	}
}

// roomsEvent tells every page the new counts of rooms, including the pages
// of users who did not join them: a room's own channel reaches only its
// members. Deleted names rooms that are gone.
type roomsEvent struct {
	Kind    string      `json:"kind"` // "rooms"
	Rooms   []roomCount `json:"rooms,omitempty"`
	Deleted []string    `json:"deleted,omitempty"`
}

// roomCounts reads the counts of rooms as the room list shows them.
func (a *App) roomCounts(ctx context.Context, rooms []string) ([]roomCount, error) {
	members, err := a.db.memberCounts(ctx, rooms)
	if err != nil {
		return nil, err
	}
	out := make([]roomCount, len(rooms))
	for i, room := range rooms {
		online, err := a.im.GetChanOnline(ctx, chanPrefix+room)
		if err != nil {
			return nil, err
		}
		out[i] = roomCount{Name: room, Members: members[i], Online: online}
	}
	return out, nil
}

// broadcastCounts sends a room's counts after a join or leave, or that it
// was deleted. The counts travel in the frame, so no page has to ask the API
// for them: one broadcast per change, rather than one request per open page
// per change (reloading the room list on an event) or per page per interval
// (polling). Like announce, a failure only leaves counts stale until the
// next reload, and so do two changes to one room in the same instant, whose
// counts may arrive in either order; pages reload the room list on every
// reconnect.
func (a *App) broadcastCounts(ctx context.Context, room string, deleted bool) {
	event := roomsEvent{Kind: "rooms"}
	var err error
	if deleted {
		event.Deleted = []string{room}
	} else {
		event.Rooms, err = a.roomCounts(ctx, []string{room})
	}
	if err == nil {
		_, err = a.im.SendBroadcastMessage(ctx, event)
	}
	if err != nil {
		a.log.Warn("failed to broadcast room counts", "room", room, "err", err)
	}
}

type memberInfo struct {
	ID     string `json:"id"`
	Nick   string `json:"nick"`
	Online bool   `json:"online"`
}

// roomMembers lists a room's members, for its members only: who is in a
// room is not for everyone to see.
func (a *App) roomMembers(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if !a.requireMember(w, r) {
		return
	}
	ids, err := a.db.roomMembers(ctx, chi.URLParam(r, "room"))
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	users, err := a.db.users(ctx, ids)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	userIDs := make([]string, len(users))
	for i, u := range users {
		userIDs[i] = u.ID
	}
	online, err := a.im.HasOnlineMany(ctx, userIDs)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	out := make([]memberInfo, len(users))
	for i, u := range users {
		out[i] = memberInfo{ID: u.ID, Nick: u.Nick, Online: online[i]}
	}
	writeJSON(w, http.StatusOK, map[string]any{"members": out})
}

// requireMember answers 403 unless the signed-in user joined the room.
func (a *App) requireMember(w http.ResponseWriter, r *http.Request) bool {
	ok, err := a.db.isMember(r.Context(), chi.URLParam(r, "room"), currentUser(r).ID)
	if err != nil {
		a.internalError(w, r, err)
		return false
	}
	if !ok {
		writeError(w, http.StatusForbidden, "not_member", "join the room first")
	}
	return ok
}

// roomHistory pages backwards: ?before=<msgId>&limit=N returns up to N
// messages older than msgId, oldest first, and whether there are more.
func (a *App) roomHistory(w http.ResponseWriter, r *http.Request) {
	before, limit, ok := pageQuery(w, r)
	if !ok || !a.requireMember(w, r) {
		return
	}
	msgs, more, err := a.db.history(r.Context(), chi.URLParam(r, "room"), before, limit)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages": msgs, "more": more})
}

// sendRoom stores the message in the room's history first, so that a page
// that reloads history right after sees it, then sends it to the room.
func (a *App) sendRoom(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Text string `json:"text"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	text, ok := cleanText(w, req.Text)
	if !ok || !a.requireMember(w, r) {
		return
	}
	u, room := currentUser(r), chi.URLParam(r, "room")
	id, err := a.db.newMessageID(r.Context(), room)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	m := roomMessage{Kind: "chat", Room: room, MsgID: id, From: u.ID, Nick: u.Nick,
		Text: text, TS: a.now().UnixMilli()}
	if err := a.db.addMessage(r.Context(), m); err != nil {
		a.internalError(w, r, err)
		return
	}
	if _, err := a.im.SendChanMessage(r.Context(), u.ID, chanPrefix+room, m); err != nil {
		a.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, m)
}

// recallEvent removes a message from every open page of the room.
type recallEvent struct {
	Kind  string `json:"kind"` // "recall"
	Room  string `json:"room"`
	MsgID string `json:"msgId"`
}

func (a *App) recall(w http.ResponseWriter, r *http.Request) {
	ctx, u, room, msgID := r.Context(), currentUser(r), chi.URLParam(r, "room"), chi.URLParam(r, "msgID")
	if !msgIDPattern.MatchString(msgID) {
		writeError(w, http.StatusBadRequest, "bad_message_id", "not a message id")
		return
	}
	m, err := a.db.message(ctx, room, msgID)
	if errors.Is(err, errNotFound) {
		writeError(w, http.StatusNotFound, "no_message", "no such message (already recalled?)")
		return
	} else if err != nil {
		a.internalError(w, r, err)
		return
	}
	if m.From != u.ID {
		writeError(w, http.StatusForbidden, "not_yours", "you can only recall your own messages")
		return
	}
	if a.now().UnixMilli()-m.TS > recallWindow.Milliseconds() {
		writeError(w, http.StatusConflict, "too_late", "messages can be recalled within 2 minutes")
		return
	}
	removed, err := a.db.removeMessage(ctx, room, msgID)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if !removed {
		writeError(w, http.StatusNotFound, "no_message", "no such message (already recalled?)")
		return
	}
	if _, err := a.im.SendChanMessage(ctx, u.ID, chanPrefix+room, recallEvent{Kind: "recall", Room: room, MsgID: msgID}); err != nil {
		a.internalError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// kick closes every socket of a user with the forced-offline code; the
// user's pages show that and do not reconnect.
func (a *App) kick(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Nick string `json:"nick"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	u, ok := a.userByNick(w, r, req.Nick)
	if !ok {
		return
	}
	wasOnline, err := a.im.HasOnline(r.Context(), u.ID)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if err := a.im.ForceOffline(r.Context(), u.ID); err != nil {
		a.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"kicked": u, "wasOnline": wasOnline})
}

func roomChans(rooms []string) []string {
	out := make([]string, len(rooms))
	for i, r := range rooms {
		out[i] = chanPrefix + r
	}
	return out
}
