package imhelper

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/store"
)

func TestKeepFor(t *testing.T) {
	rules := []HistoryRule{{Prefix: "", Size: 100, TTL: time.Minute}, {Prefix: "bot:", Size: 0}, {Prefix: "bot:vip", Size: 5, TTL: time.Second}}
	for name, want := range map[string]store.Keep{
		"alice":     {Size: 100, TTL: time.Minute},
		"bot:x":     {},
		"bot:vip-1": {Size: 5, TTL: time.Second},
	} {
		if got := keepFor(rules, name); got != want {
			t.Errorf("%s: %+v, want %+v", name, got, want)
		}
	}
	if got := keepFor([]HistoryRule{{Prefix: "room-", Size: 1, TTL: time.Second}}, "lobby"); got.On() {
		t.Errorf("no matching rule must keep nothing: %+v", got)
	}
	for _, bad := range []HistoryOptions{{Clients: []HistoryRule{{Size: -1}}}, {Channels: []HistoryRule{{Size: 10, TTL: time.Millisecond}}}, {Channels: []HistoryRule{{Size: MaxHistorySize + 1, TTL: time.Second}}}} {
		if bad.check() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// History pages through what a stream kept, says when the page is not
// complete, and StreamPosition is where the next message will follow.
func TestHistoryPages(t *testing.T) {
	rs := redistest.Start(t)
	ctx := context.Background()
	c, err := New(ctx, Options{RedisURL: rs.URL(), History: &HistoryOptions{Channels: []HistoryRule{{Prefix: "r", Size: 5, TTL: time.Minute}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start, err := c.StreamPosition(ctx, ChanStream("room"))
	if err != nil || start.Epoch == "" || start.Offset != 0 {
		t.Fatalf("start %+v %v", start, err)
	}
	var sent []Position
	for i := 0; i < 7; i++ { // the window keeps the last 5
		s, err := c.SendChanMessageResult(ctx, "a", "room", i)
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, s.Channel)
	}
	if sent[0].Epoch != start.Epoch || sent[6].Offset != 7 {
		t.Fatalf("positions %+v", sent)
	}
	p, err := c.History(ctx, ChanStream("room"), sent[3], 2)
	if err != nil || !p.Complete || len(p.Messages) != 2 || p.Messages[0].Position != sent[4] || p.Top != sent[6] {
		t.Fatalf("page after 4: %+v %v", p, err)
	}
	if !strings.HasSuffix(string(p.Messages[0].Frame), `"data":4,"epoch":"`+sent[4].Epoch+`","offset":5}`) {
		t.Fatalf("frame %s", p.Messages[0].Frame)
	}
	p, _ = c.History(ctx, ChanStream("room"), start, 10)
	if p.Complete || len(p.Messages) != 5 || p.Messages[0].Position != sent[2] {
		t.Fatalf("from the start, with 2 trimmed: %+v", p)
	}
	p, _ = c.History(ctx, ChanStream("room"), Position{Epoch: "other", Offset: 1}, 10)
	if p.Complete || len(p.Messages) != 5 {
		t.Fatalf("another epoch must page from the oldest kept: %+v", p)
	}
	if _, err := c.History(ctx, ChanStream("room"), start, 0); err != ErrHistoryLimit {
		t.Fatalf("limit 0: %v", err)
	}
	if p, _ := c.History(ctx, ChanStream("quiet"), Position{}, 10); len(p.Messages) != 0 {
		t.Fatalf("a channel without history: %+v", p)
	}
}
