package wire

import (
	"bytes"
	"net/url"
	"strings"
	"testing"
)

func TestPositionText(t *testing.T) {
	p := Position{Epoch: "Xk3fQ2ab", Offset: 17}
	if p.String() != "Xk3fQ2ab.17" {
		t.Fatal(p.String())
	}
	q, err := ParsePosition(p.String())
	if err != nil || q != p {
		t.Fatalf("%+v %v", q, err)
	}
	for _, bad := range []string{".1", "a.", "a.-1", "a.01", "a.1.2", "a b.1", "a.18446744073709551616", strings.Repeat("e", 33) + ".1", "a.+1", "é.1"} {
		if _, err := ParsePosition(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	if q, err := ParsePosition(""); err != nil || !q.IsZero() {
		t.Errorf("empty: %+v %v", q, err)
	}
}

func TestFramePosition(t *testing.T) {
	base := ChannelFrame("id1", "alice", "room", 5, []byte(`{"x":"\",\"epoch\":\"no\",\"offset\":3}","epoch":"fake","offset":2}`))
	f := AppendPosition(base, Position{Epoch: "E-_1", Offset: 42})
	if !bytes.HasSuffix(f, []byte(`},"epoch":"E-_1","offset":42}`)) {
		t.Fatalf("%s", f)
	}
	p, ok := FramePosition(f)
	if !ok || p != (Position{Epoch: "E-_1", Offset: 42}) {
		t.Fatalf("%+v %v", p, ok)
	}
	// The payload's own epoch/offset fields are not the frame's position.
	if _, ok := FramePosition(base); ok {
		t.Fatal("a frame without a spliced position must not parse")
	}
	for _, bad := range []string{`{}`, `{"epoch":"a","offset":1}`, `{"a":1,"epoch":"","offset":1}`, `{"a":1,"epoch":"a","offset":}`, `{"a":1,"epoch":"a","offset":01}`, `{"a":1,"epoch":"a b","offset":1}`} {
		if _, ok := FramePosition([]byte(bad)); ok && bad != `{"epoch":"a","offset":1}` {
			t.Errorf("%s parsed", bad)
		}
	}
}

func TestParseResume(t *testing.T) {
	q := url.Values{"token": {"x"}, "pos": {"Ep1.5", "Ep2.0.room.a", "Ep3.9.房间"}}
	r, err := ParseResume(q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if r.Client != (Position{"Ep1", 5}) || len(r.Channels) != 2 || r.Channels["room.a"] != (Position{"Ep2", 0}) || r.Channels["房间"] != (Position{"Ep3", 9}) {
		t.Fatalf("%+v", r)
	}
	tooMany := url.Values{}
	for i := 0; i <= MaxResumeChannels; i++ {
		tooMany.Add("pos", "E.1.c"+strings.Repeat("x", i))
	}
	for name, raw := range map[string]string{
		"two personal":  "pos=a.1&pos=b.2",
		"channel twice": "pos=a.1.c&pos=b.2.c",
		"bad channel":   "pos=a.1.a%20b",
		"empty channel": "pos=a.1.",
		"bad offset":    "pos=a.x",
		"no offset":     "pos=a",
		"too many":      tooMany.Encode(),
		"bad query":     "pos=%zz",
	} {
		if _, err := ParseResume(raw); err == nil {
			t.Errorf("%s: %q parsed", name, raw)
		}
	}
	if r, err := ParseResume("token=abc"); err != nil || !r.Client.IsZero() || r.Channels != nil {
		t.Errorf("no pos: %+v %v", r, err)
	}
}

func TestRecoveredFrame(t *testing.T) {
	got := string(RecoveredFrame(true, []StreamState{{Pos: Position{"E", 3}, Recovered: true}, {Channel: `r"1`, Pos: Position{"F", 0}}}))
	want := `{"type":"recovered","first":true,"streams":[{"channel":"","epoch":"E","offset":3,"recovered":true},{"channel":"r\"1","epoch":"F","offset":0,"recovered":false}]}`
	if got != want {
		t.Fatalf("\n got %s\nwant %s", got, want)
	}
	if got := string(RecoveredFrame(false, nil)); got != `{"type":"recovered","streams":[]}` {
		t.Fatal(got)
	}
}

// ParseResume parses what a browser puts in its URL: never a panic, and
// whatever it accepts is within bounds and prints back to what parses to
// the same.
func FuzzParseResume(f *testing.F) {
	for _, s := range []string{"pos=a.1", "pos=a.1.room&pos=b.0", "token=x&pos=Ep.18446744073709551615.c", "pos=a.1.%E6%88%BF", "pos=..", "pos=a.1.&pos="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r, err := ParseResume(raw)
		if err != nil {
			return
		}
		if len(r.Channels) > MaxResumeChannels {
			t.Fatalf("%d channels", len(r.Channels))
		}
		for ch, p := range r.Channels {
			if ValidateChannel(ch) != nil || !ValidEpoch(p.Epoch) {
				t.Fatalf("accepted %q %+v", ch, p)
			}
			back, err := ParsePosition(p.String())
			if err != nil || back != p {
				t.Fatalf("%+v -> %q -> %+v %v", p, p.String(), back, err)
			}
		}
		if !r.Client.IsZero() && !ValidEpoch(r.Client.Epoch) {
			t.Fatalf("accepted %+v", r.Client)
		}
	})
}

// FramePosition reads the tail of frames from Redis: never a panic, and a
// position it reads is what AppendPosition wrote.
func FuzzFramePosition(f *testing.F) {
	f.Add([]byte(`{"type":"channel","data":1,"epoch":"E","offset":1}`), "E", uint64(1))
	f.Add([]byte(`{"epoch":"","offset":}`), "x", uint64(0))
	f.Fuzz(func(t *testing.T, frame []byte, epoch string, off uint64) {
		if p, ok := FramePosition(frame); ok {
			if !ValidEpoch(p.Epoch) {
				t.Fatalf("read epoch %q", p.Epoch)
			}
			if !bytes.HasSuffix(frame, []byte(`"epoch":"`+p.Epoch+`","offset":`+Position{p.Epoch, p.Offset}.String()[len(p.Epoch)+1:]+`}`)) {
				t.Fatalf("read %+v from %q", p, frame)
			}
		}
		if len(frame) == 0 || frame[len(frame)-1] != '}' || !ValidEpoch(epoch) {
			return
		}
		want := Position{Epoch: epoch, Offset: off}
		if got, ok := FramePosition(AppendPosition(frame, want)); !ok || got != want {
			t.Fatalf("AppendPosition(%q, %+v) read back %+v %v", frame, want, got, ok)
		}
	})
}
