package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
)

// Many users creating rooms at once never get past the cap: the check and
// the creation are one step in Redis. Each creator is a user of their own,
// so that only the cap on all rooms can refuse them.
func TestRoomCapHoldsUnderConcurrentCreates(t *testing.T) {
	e := newEnv(t)
	const creators = 300
	users := make([]*browser, creators)
	for i := range users {
		users[i] = e.signIn(fmt.Sprint("creator", i))
	}
	type result struct {
		status int
		body   []byte
		err    error
	}
	results := make([]result, creators)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, u := range users {
		wg.Go(func() {
			<-start
			var r result
			r.status, r.body, r.err = u.request("POST", fmt.Sprintf("/api/rooms/room-%d/join", i), nil)
			results[i] = r
		})
	}
	close(start)
	wg.Wait()

	created := 0
	for i, r := range results {
		var apiErr apiError
		switch {
		case r.err != nil:
			t.Fatalf("creator %d: %v", i, r.err)
		case r.status == http.StatusOK:
			created++
		case r.status != http.StatusConflict || json.Unmarshal(r.body, &apiErr) != nil || apiErr.Code != "too_many_rooms":
			t.Fatalf("creator %d: status %d %s, want 200 or 409 too_many_rooms", i, r.status, r.body)
		}
	}
	if want := maxRooms - len(defaultRoomNames()); created != want {
		t.Fatalf("%d rooms created, want exactly %d (the cap of %d less the default rooms)", created, want, maxRooms)
	}
	var rooms roomList
	users[0].mustDo("GET", "/api/rooms", nil, http.StatusOK, &rooms)
	if len(rooms.Rooms) != maxRooms {
		t.Fatalf("%d rooms listed, want %d", len(rooms.Rooms), maxRooms)
	}
}

// One user can hold only a few rooms, and a room nobody is in is deleted,
// so one user cannot use up the rooms everybody shares.
func TestOneUserCannotFillTheRoomCap(t *testing.T) {
	e := newEnv(t)
	hog, other := e.signIn("hog"), e.signIn("other")
	for i := range maxRoomsPerUser {
		hog.mustDo("POST", fmt.Sprintf("/api/rooms/hog-%d/join", i), nil, http.StatusOK, nil)
	}
	hog.wantError("POST", "/api/rooms/hog-more/join", nil, http.StatusConflict, "too_many_joined")
	hog.wantError("POST", "/api/rooms/lobby/join", nil, http.StatusConflict, "too_many_joined") // existing rooms count too
	hog.mustDo("POST", "/api/rooms/hog-0/join", nil, http.StatusOK, nil)                        // joined already: still fine
	other.mustDo("POST", "/api/rooms/others-room/join", nil, http.StatusOK, nil)

	// Leaving a room deleted it (hog was its only member) and frees a place.
	hog.mustDo("POST", "/api/rooms/hog-0/leave", nil, http.StatusNoContent, nil)
	var rooms roomList
	hog.mustDo("GET", "/api/rooms", nil, http.StatusOK, &rooms)
	if rooms.get("hog-0").Name != "" || len(rooms.Rooms) != len(defaultRoomNames())+maxRoomsPerUser {
		t.Fatalf("rooms after hog left hog-0 = %+v", rooms.Rooms)
	}
	hog.mustDo("POST", "/api/rooms/hog-more/join", nil, http.StatusOK, nil)
}

// roomDeleted matches a broadcast that tells pages a room is gone.
func roomDeleted(room string) func(frame) bool {
	return func(f frame) bool {
		var d roomsEvent
		return f.Type == "broadcast" && json.Unmarshal(f.Data, &d) == nil && slices.Contains(d.Deleted, room)
	}
}

// A room lives while it has members; the default rooms always.
func TestEmptyRoomDeleted(t *testing.T) {
	e := newEnv(t)
	a, b, c := e.signIn("alice"), e.signIn("bob"), e.signIn("carol")
	sc := c.connect()
	for _, u := range []*browser{a, b} {
		u.mustDo("POST", "/api/rooms/short-lived/join", nil, http.StatusOK, nil)
	}
	a.mustDo("POST", "/api/rooms/short-lived/messages", map[string]string{"text": "before"}, http.StatusCreated, nil)
	a.mustDo("POST", "/api/rooms/short-lived/leave", nil, http.StatusNoContent, nil)
	sc.next("short-lived with bob left in it", roomCounts("short-lived", 1, 0))

	b.mustDo("POST", "/api/rooms/short-lived/leave", nil, http.StatusNoContent, nil)
	sc.next("short-lived deleted", roomDeleted("short-lived"))
	var rooms roomList
	c.mustDo("GET", "/api/rooms", nil, http.StatusOK, &rooms)
	if rooms.get("short-lived").Name != "" {
		t.Fatalf("the empty room is still listed: %+v", rooms.Rooms)
	}

	// The name is free again, for a new room with no history.
	c.mustDo("POST", "/api/rooms/short-lived/join", nil, http.StatusOK, nil)
	var p struct{ Messages []roomMessage }
	c.mustDo("GET", "/api/rooms/short-lived/messages", nil, http.StatusOK, &p)
	if len(p.Messages) != 0 {
		t.Fatalf("the new room has the old room's history: %+v", p.Messages)
	}

	a.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil)
	a.mustDo("POST", "/api/rooms/lobby/leave", nil, http.StatusNoContent, nil)
	sc.next("lobby empty", roomCounts("lobby", 0, 0))
	c.mustDo("GET", "/api/rooms", nil, http.StatusOK, &rooms)
	if rooms.get("lobby").Name == "" {
		t.Fatalf("the empty default room was deleted: %+v", rooms.Rooms)
	}
}

// Who is in a room is for its members to see.
func TestRoomMembersForMembersOnly(t *testing.T) {
	e := newEnv(t)
	a, b := e.signIn("alice"), e.signIn("bob")
	a.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil)
	b.wantError("GET", "/api/rooms/lobby/members", nil, http.StatusForbidden, "not_member")
	b.wantError("GET", "/api/rooms/no-such-room/members", nil, http.StatusForbidden, "not_member")

	b.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil)
	var members struct{ Members []memberInfo }
	b.mustDo("GET", "/api/rooms/lobby/members", nil, http.StatusOK, &members)
	if want := []memberInfo{{a.user.ID, "alice", false}, {b.user.ID, "bob", false}}; !slices.Equal(members.Members, want) {
		t.Fatalf("members = %+v, want %+v", members.Members, want)
	}
	b.mustDo("POST", "/api/rooms/lobby/leave", nil, http.StatusNoContent, nil)
	b.wantError("GET", "/api/rooms/lobby/members", nil, http.StatusForbidden, "not_member")
}
