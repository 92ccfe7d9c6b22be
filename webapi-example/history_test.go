package main

import (
	"fmt"
	"net/http"
	"testing"
)

// The rooms' channels keep history (historyOptions): a room message frame
// carries its position, and a page that comes back with its position gets
// what it missed replayed before the recovered frame, in order.
func TestRoomHistoryResume(t *testing.T) {
	e := newEnv(t)
	a, b := e.signIn("alice"), e.signIn("bob")
	for _, u := range []*browser{a, b} {
		u.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil)
	}
	const ch = chanPrefix + "lobby"
	sb := b.connect()
	first := sb.next("the first recovered frame", func(f frame) bool { return f.Type == "recovered" })
	if !first.First {
		t.Fatalf("the socket's first recovered frame has no first: %+v", first)
	}
	if st, ok := first.Stream(ch); !ok || !st.Recovered {
		t.Fatalf("recovered frame %+v: want %s listed as recovered", first, ch)
	}

	a.mustDo("POST", "/api/rooms/lobby/messages", map[string]string{"text": "one"}, http.StatusCreated, nil)
	one := sb.next("the live message", kind("chat"))
	if one.Channel != ch || one.Epoch == "" || one.Offset == 0 {
		t.Fatalf("room frame %+v: want a position in %s", one, ch)
	}
	sb.close()
	// Bob stays online for the offline grace, so the room keeps him.
	for _, text := range []string{"two", "three"} {
		a.mustDo("POST", "/api/rooms/lobby/messages", map[string]string{"text": text}, http.StatusCreated, nil)
	}

	sb = b.resume(fmt.Sprintf("%s.%d.%s", one.Epoch, one.Offset, ch))
	var got []string
	for len(got) < 3 {
		f := sb.next("the replay and the recovered frame", func(f frame) bool { return f.Type == "recovered" || f.DataMap()["kind"] == "chat" })
		if f.Type == "recovered" {
			st, ok := f.Stream(ch)
			if !f.First || !ok || !st.Recovered || st.Epoch != one.Epoch || st.Offset != one.Offset+2 {
				t.Fatalf("recovered frame %+v after %v: want %s recovered at %s.%d", f, got, ch, one.Epoch, one.Offset+2)
			}
			got = append(got, "recovered")
			continue
		}
		if f.Epoch != one.Epoch || f.Offset != one.Offset+uint64(len(got))+1 {
			t.Fatalf("replayed %q at %s.%d, want %s.%d", f.DataMap()["text"], f.Epoch, f.Offset, one.Epoch, one.Offset+uint64(len(got))+1)
		}
		got = append(got, f.DataMap()["text"].(string))
	}
	if fmt.Sprint(got) != "[two three recovered]" {
		t.Fatalf("after resuming: %v, want the two missed messages, then the recovered frame", got)
	}
}
