package imhelper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/imbroker/imbroker/internal/redistest"
)

func TestEncodePayload(t *testing.T) {
	c := &Client{opt: Options{MaxPayload: 64}}
	cases := []struct {
		in   any
		want string
		err  error
	}{
		{`{ "a" : [1, 2] }`, `{"a":[1,2]}`, nil},
		{[]byte("\n\"text\"\n"), `"text"`, nil},
		{json.RawMessage(`null`), `null`, nil},
		{map[string]int{"n": 1}, `{"n":1}`, nil},
		{struct{ X string }{"<&>"}, `{"X":"\u003c\u0026\u003e"}`, nil},
		{`{"a":`, "", ErrInvalidPayload},
		{"", "", ErrInvalidPayload},
		{make(chan int), "", ErrInvalidPayload},
		{`"` + string(make([]byte, 70)) + `"`, "", ErrPayloadTooLarge},
		// json.Compact lets invalid UTF-8 inside a string through; a node
		// would then drop the frame after the send reported success.
		{"\"a\xffb\"", "", ErrPayloadNotUTF8},
		{[]byte("\"a\xffb\""), "", ErrInvalidPayload},
		{json.RawMessage("{\"k\":\"\xed\xa0\x80\"}"), "", ErrPayloadNotUTF8}, // a UTF-16 surrogate
	}
	for _, tc := range cases {
		got, err := c.encodePayload(tc.in)
		if !errors.Is(err, tc.err) || string(got) != tc.want {
			t.Errorf("encodePayload(%v) = %s, %v; want %s, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestNoNodes(t *testing.T) {
	r := redistest.Start(t)
	c, err := New(context.Background(), Options{RedisURL: r.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.PrevConnectServer(context.Background(), "a", ""); !errors.Is(err, ErrNoNodes) {
		t.Errorf("PrevConnectServer with no nodes: %v", err)
	}
	if _, err := c.SendMessage(context.Background(), "a", []string{"b"}, `1`); !errors.Is(err, ErrNoNodes) {
		t.Errorf("SendMessage with no nodes: %v", err)
	}
	// Refused before anything is published, so nothing accepted is lost.
	if _, err := c.SendChanMessage(context.Background(), "a", "r", "\"a\xffb\""); !errors.Is(err, ErrPayloadNotUTF8) {
		t.Errorf("SendChanMessage with invalid UTF-8: %v", err)
	}
	if _, err := c.SendBroadcastMessage(context.Background(), []byte("\"\xc3\"")); !errors.Is(err, ErrPayloadNotUTF8) {
		t.Errorf("SendBroadcastMessage with invalid UTF-8: %v", err)
	}
	c.Close()
	if _, err := c.SendChanMessage(context.Background(), "a", "r", `1`); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

func FuzzEncodePayload(f *testing.F) {
	f.Add([]byte(`{"a":1}`))
	f.Add([]byte(" [1,\n2] "))
	f.Add([]byte("\"a\xffb\""))
	c := &Client{opt: Options{MaxPayload: 1 << 16}}
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := c.encodePayload(b)
		if err != nil {
			return
		}
		// Accepted payloads are valid, compact JSON: no raw newline can
		// break the node message framing.
		if !json.Valid(out) || !utf8.Valid(out) {
			t.Fatalf("accepted invalid JSON or UTF-8 %q", out)
		}
		for _, ch := range out {
			if ch == '\n' {
				t.Fatalf("newline survived compaction: %q", out)
			}
		}
	})
}

// CallTimeout bounds each client's join of JoinChanClients, not the whole
// batch: a batch that takes longer than CallTimeout in all still succeeds
// (the failover test's 1,000 joins once ran past 5 s on a loaded box).
// The batch grows until it outlasts CallTimeout, so the test holds on a
// fast machine as on a slow one.
func TestJoinChanClientsBoundsEachJoin(t *testing.T) {
	r := redistest.Start(t)
	const timeout = time.Second
	c, err := New(context.Background(), Options{RedisURL: r.URL(), CallTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for n := 1000; ; n *= 4 {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprintf("u%d-%d", n, i)
		}
		start := time.Now()
		if err := c.JoinChanClients(context.Background(), "room", ids...); err != nil {
			t.Fatalf("%d joins: %v after %v", n, err, time.Since(start))
		}
		if took := time.Since(start); took > timeout {
			t.Logf("%d joins took %v, CallTimeout %v", n, took.Round(time.Millisecond), timeout)
			if err := c.LeaveChanClients(context.Background(), "room", ids...); err != nil {
				t.Fatalf("%d leaves: %v", n, err)
			}
			return
		}
	}
}
