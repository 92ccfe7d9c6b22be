package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// The same vectors are in docs/protocol.md; they were checked against an
// independent Python implementation of the documented algorithm.
func TestScoreVectors(t *testing.T) {
	nodes := []string{"node-a", "node-b", "node-c"}
	vectors := []struct {
		client string
		scores [3]uint64
		owner  string
	}{
		{"alice", [3]uint64{0x1094e128f3d8fadb, 0x081e80916f4fd971, 0x2506f3403d9bf980}, "node-c"},
		{"bob", [3]uint64{0x8089fde9f00e4606, 0x92dcd8b0c01847af, 0x1553b45d8adc4fa1}, "node-b"},
		{"carol", [3]uint64{0xac95682975541701, 0x3e2df81d7db571d0, 0x99d963baafd5101e}, "node-a"},
		{"用户", [3]uint64{0xba1bfa66c9a57ca5, 0xca33b03c9bee8b49, 0x338c1bdf6147dc8d}, "node-b"},
	}
	for _, v := range vectors {
		for i, n := range nodes {
			if got := Score(n, v.client); got != v.scores[i] {
				t.Errorf("Score(%q,%q) = %016x, want %016x", n, v.client, got, v.scores[i])
			}
		}
		if got := Owner(v.client, nodes); got != v.owner {
			t.Errorf("Owner(%q) = %q, want %q", v.client, got, v.owner)
		}
		// order of the node list must not matter
		if got := Owner(v.client, []string{"node-c", "node-a", "node-b"}); got != v.owner {
			t.Errorf("Owner(%q) depends on node order: %q", v.client, got)
		}
	}
	if Owner("x", nil) != "" {
		t.Error("Owner with no nodes should be empty")
	}
}

func TestOwnerBalanceAndMinimalMovement(t *testing.T) {
	three := []string{"n1", "n2", "n3"}
	four := []string{"n1", "n2", "n3", "n4"}
	const clients = 30000
	counts := map[string]int{}
	moved := 0
	for i := 0; i < clients; i++ {
		id := fmt.Sprintf("user-%d", i)
		a, b := Owner(id, three), Owner(id, four)
		counts[a]++
		if a != b {
			moved++
			if b != "n4" {
				t.Fatalf("%s moved from %s to %s; only moves to the new node are allowed", id, a, b)
			}
		}
	}
	for n, c := range counts {
		if c < clients/3*9/10 || c > clients/3*11/10 {
			t.Errorf("node %s owns %d of %d clients; want within 10%% of a third", n, c, clients)
		}
	}
	if moved < clients/4*9/10 || moved > clients/4*11/10 {
		t.Errorf("adding a 4th node moved %d of %d; want about a quarter", moved, clients)
	}
}

func TestValidate(t *testing.T) {
	good := []string{"alice", "user:42", "用户", strings.Repeat("a", 128)}
	for _, id := range good {
		if err := ValidateClientID(id); err != nil {
			t.Errorf("ValidateClientID(%q) = %v", id, err)
		}
	}
	bad := []string{"", "a b", "a\tb", "a\nb", "\x00", strings.Repeat("a", 129), "\xff\xfe", "a\u00a0b"}
	for _, id := range bad {
		if err := ValidateClientID(id); !errors.Is(err, ErrBadClientID) {
			t.Errorf("ValidateClientID(%q) = %v, want ErrBadClientID", id, err)
		}
	}
	if err := ValidateMeta(strings.Repeat("m", MaxMetaLen)); err != nil {
		t.Error(err)
	}
	if err := ValidateMeta(strings.Repeat("m", MaxMetaLen+1)); !errors.Is(err, ErrMetaTooBig) {
		t.Errorf("oversized meta: %v", err)
	}
}

// Golden frames pin the bytes browsers receive.
func TestFramesGolden(t *testing.T) {
	data := []byte(`{"text":"hi"}`)
	cases := []struct {
		got  []byte
		want string
	}{
		{MessageFrame("01J", "alice", nil, 1732340000000, data),
			`{"type":"message","id":"01J","from":"alice","ts":1732340000000,"data":{"text":"hi"}}`},
		{MessageFrame("01J", "alice", []string{"bob", "carol"}, 1, data),
			`{"type":"message","id":"01J","from":"alice","to":["bob","carol"],"ts":1,"data":{"text":"hi"}}`},
		{ChannelFrame("01J", "alice", "room-1", 2, data),
			`{"type":"channel","id":"01J","from":"alice","channel":"room-1","ts":2,"data":{"text":"hi"}}`},
		{BroadcastFrame("01J", 3, []byte(`"x"`)), `{"type":"broadcast","id":"01J","ts":3,"data":"x"}`},
		{ReceiptFrame("01J", "bob", StatusOffline), `{"type":"receipt","id":"01J","to":"bob","status":"offline"}`},
	}
	for _, c := range cases {
		if string(c.got) != c.want {
			t.Errorf("got  %s\nwant %s", c.got, c.want)
		}
	}
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"plain", `q"uote\back`, "ctl\x01\x1f\n\r\t", "bad\xffutf8", "用户", "line\u2028sep"} {
		var got string
		b := AppendString(nil, s)
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("AppendString(%q) = %s is not JSON: %v", s, b, err)
		}
		want := strings.ToValidUTF8(s, "\ufffd")
		if got != want {
			t.Errorf("round trip of %q = %q", s, got)
		}
	}
}

func TestNodeMsgRoundTrip(t *testing.T) {
	f1, f2 := []byte(`{"type":"message"}`), []byte(`{"type":"message","to":["b"]}`)
	msg := EncodeNodeMsg(NodeMsg{Kind: KindSend, To: []string{"b", "c"}, Echo: "a", Receipt: "a", ID: "x"}, f1, f2)
	h, frames, err := DecodeNodeMsg(msg)
	if err != nil {
		t.Fatal(err)
	}
	if h.Kind != KindSend || len(h.To) != 2 || h.Echo != "a" || len(frames) != 2 || string(frames[1]) != string(f2) {
		t.Fatalf("round trip: %+v %q", h, frames)
	}
	for _, bad := range []string{"", "{", `{"k":"nope"}`, `{"k":"send"}`, `{"k":"send","echo":"a"}` + "\n{}",
		`{"k":"kick"}`, `{"k":"deliver"}`, `{"k":"send"}` + "\nnot json", `{"k":"send"}` + "\n"} {
		if _, _, err := DecodeNodeMsg([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeNodeMsg(%q) = %v, want ErrMalformed", bad, err)
		}
	}
}

func TestTokenAndID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		tok := NewToken()
		if !ValidToken(tok) || seen[tok] {
			t.Fatalf("bad or repeated token %q", tok)
		}
		seen[tok] = true
	}
	for _, bad := range []string{"", "short", strings.Repeat("a", 23), strings.Repeat("!", 22)} {
		if ValidToken(bad) {
			t.Errorf("ValidToken(%q) = true", bad)
		}
	}
	a := NewID(time.UnixMilli(1000))
	b := NewID(time.UnixMilli(2000))
	if len(a) != 26 || !(a < b) {
		t.Errorf("ids must be 26 chars and sort by time: %q %q", a, b)
	}
}

func FuzzDecodeNodeMsg(f *testing.F) {
	f.Add([]byte(`{"k":"send","to":["b"],"id":"x"}` + "\n" + `{"type":"message"}`))
	f.Add([]byte(`{"k":"join","c":"a","chans":["r"]}`))
	f.Add([]byte(`{"k":"deliver","to":["a"]}` + "\n{}\n{}"))
	for _, b := range batchSeeds() {
		f.Add(b)
	}
	f.Fuzz(checkDecoded)
}

// FuzzDecodeBatch is FuzzDecodeNodeMsg started from batches only, so that
// the fuzzer spends its time on their framing (which line is a header,
// which a frame, how many frames a send has).
func FuzzDecodeBatch(f *testing.F) {
	for _, b := range batchSeeds() {
		f.Add(b)
	}
	f.Fuzz(checkDecoded)
}

// checkDecoded is the property every decoded node message has: its frames
// are deliverable, it survives a re-encode, and a batch carries exactly
// the sends that, published one by one, would decode the same.
func checkDecoded(t *testing.T, b []byte) {
	h, frames, err := DecodeNodeMsg(b)
	if err != nil {
		return
	}
	for _, fr := range frames {
		if !ValidFrame(fr) {
			t.Fatalf("decoded an invalid frame %q", fr)
		}
	}
	if h.Kind != KindBatch {
		if len(h.Sends) != 0 {
			t.Fatalf("%q: a %s with sends", b, h.Kind)
		}
		// what decodes must survive a re-encode
		if _, _, err := DecodeNodeMsg(EncodeNodeMsg(h, frames...)); err != nil {
			t.Fatalf("re-encode of %q failed: %v", b, err)
		}
		return
	}
	if len(h.Sends) == 0 || frames != nil || h.Version < BatchVersion {
		t.Fatalf("%q: batch %+v with frames %q", b, h, frames)
	}
	for i, s := range h.Sends {
		if !ValidFrame(s.Frame) || (s.Header.Echo != "") != (s.Echo != nil) || (s.Echo != nil && !ValidFrame(s.Echo)) {
			t.Fatalf("%q: send %d has bad frames %+v", b, i, s)
		}
		one := [][]byte{s.Frame}
		if s.Echo != nil {
			one = append(one, s.Echo)
		}
		alone, af, err := DecodeNodeMsg(EncodeNodeMsg(s.Header, one...))
		if err != nil || alone.Kind != KindSend || !sameHeader(alone, s.Header) || !sameFrames(af, one) {
			t.Fatalf("%q: send %d published alone decodes as %+v %q, %v", b, i, alone, af, err)
		}
	}
	again, _, err := DecodeNodeMsg(EncodeBatch(h.Version, h.Sends))
	if err != nil || len(again.Sends) != len(h.Sends) {
		t.Fatalf("re-encode of batch %q failed: %+v %v", b, again, err)
	}
	for i := range h.Sends {
		x, y := h.Sends[i], again.Sends[i]
		if !sameHeader(x.Header, y.Header) || string(x.Frame) != string(y.Frame) || string(x.Echo) != string(y.Echo) {
			t.Fatalf("batch %q: send %d re-encodes as %+v, was %+v", b, i, y, x)
		}
	}
}

// sameHeader compares headers as the wire does: versions aside, and an
// empty list the same as none (encoding/json gives [] for "to":[], the
// encoder omits it).
func sameHeader(a, b NodeMsg) bool {
	norm := func(h NodeMsg) string {
		h.Version = 0
		for _, l := range []*[]string{&h.To, &h.Chans, &h.Pos} {
			if len(*l) == 0 {
				*l = nil
			}
		}
		return fmt.Sprintf("%#v", h)
	}
	return norm(a) == norm(b)
}

func sameFrames(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if string(a[i]) != string(b[i]) {
			return false
		}
	}
	return true
}

// batchSeeds are batches as imhelper and another language's producer
// write them, and near misses.
func batchSeeds() [][]byte {
	return [][]byte{
		EncodeBatch(0, []BatchSend{
			{Header: NodeMsg{Kind: KindSend, To: []string{"b"}, ID: "1"}, Frame: []byte(`{"type":"message","id":"1"}`)},
			{Header: NodeMsg{Kind: KindSend, To: []string{"b", "c"}, Echo: "a", Receipt: "a", ID: "2", Pos: []string{"E.1", ""}, EchoPos: "F.3"},
				Frame: []byte(`{"type":"message","id":"2"}`), Echo: []byte(`{"type":"message","id":"2","to":["b","c"]}`)},
		}),
		[]byte(`{"v":2,"k":"batch"}` + "\n" + `{"v":1,"k":"send","to":["b"],"id":"x"}` + "\n{}\n" + `{"k":"send","echo":"a","id":"y"}` + "\n{}\n{}"),
		[]byte(`{"v":2,"k":"batch"}` + "\n" + `{"k":"send","echo":"a"}` + "\n{}"),
		[]byte(`{"v":2,"k":"batch"}`),
		[]byte(`{"k":"batch"}` + "\n" + `{"k":"send","to":["b"]}` + "\n{}"),
		[]byte(`{"v":2,"k":"batch"}` + "\n" + `{"k":"kick","c":"a"}`),
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add([]byte(`{"type":"online","client":"a","node":"n","conns":1,"ts":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEvent(b)
		if err != nil {
			return
		}
		if _, err := DecodeEvent(e.Encode()); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzValidateClientID(f *testing.F) {
	f.Add("alice")
	f.Add("a b")
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateClientID(s) != nil {
			return
		}
		// an accepted id must be safe to embed in JSON frames and Redis names
		var back string
		if err := json.Unmarshal(AppendString(nil, s), &back); err != nil || back != s {
			t.Fatalf("accepted id %q does not round-trip through JSON", s)
		}
		if strings.ContainsAny(s, " \n\r\t") || len(s) > MaxClientIDLen {
			t.Fatalf("accepted bad id %q", s)
		}
	})
}

func FuzzFrames(f *testing.F) {
	f.Add("id", "from", "chan", []byte(`{"a":1}`))
	f.Fuzz(func(t *testing.T, id, from, ch string, data []byte) {
		if !json.Valid(data) {
			return
		}
		for _, fr := range [][]byte{MessageFrame(id, from, []string{from}, 1, data), ChannelFrame(id, from, ch, 1, data), ReceiptFrame(id, from, ch)} {
			if !json.Valid(fr) {
				t.Fatalf("invalid frame %s", fr)
			}
		}
	})
}

func FuzzDecodeTokenRecord(f *testing.F) {
	f.Add([]byte(`{"node":"n1","client":"alice","meta":"m","iat":1}`))
	f.Add([]byte(`{"node":"","client":"a b"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeTokenRecord(b)
		if err != nil {
			return
		}
		if ValidateClientID(r.Client) != nil || ValidateClientID(r.Node) != nil {
			t.Fatalf("accepted a record with bad ids: %+v", r)
		}
	})
}

func FuzzTokenFromQuery(f *testing.F) {
	f.Add("token=" + NewToken())
	f.Add("token=a&token=b")
	f.Add("token=%zz")
	f.Fuzz(func(t *testing.T, q string) {
		if tok := TokenFromQuery(q); tok != "" && !ValidToken(tok) {
			t.Fatalf("TokenFromQuery(%q) = %q, not a valid token", q, tok)
		}
	})
}

// The hand-written header must match encoding/json byte for byte.
func TestEncodeNodeMsgMatchesEncodingJSON(t *testing.T) {
	for _, h := range []NodeMsg{
		{Kind: KindSend, To: []string{"b", `q"uote`, "用户"}, Echo: "a", Receipt: "a", ID: "01J"},
		{Kind: KindJoin, Client: "c", Chans: []string{"r1", "r<2>"}},
		{Kind: KindProbe, Nonce: "n1"},
		{Kind: KindKick, Client: "x"},
	} {
		h.Version = NodeMsgVersion // what EncodeNodeMsg writes for 0
		want, _ := json.Marshal(h)
		got := EncodeNodeMsg(h)
		// encoding/json escapes <, > and & as \u003c etc.; both decode the same.
		var a, b NodeMsg
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatalf("%s: %v", got, err)
		}
		_ = json.Unmarshal(want, &b)
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("got %s, encoding/json %s", got, want)
		}
	}
}

// The fast header parser must agree with encoding/json wherever it accepts.
func FuzzHeaderFastPath(f *testing.F) {
	f.Add([]byte(`{"k":"send","to":["b","c"],"echo":"a","rcpt":"a","id":"x"}`))
	f.Add([]byte(`{"k":"join","c":"a","chans":["r1"]}`))
	f.Add([]byte(`{"k":"send","to":[]}`))
	f.Add([]byte(`{"k":"probe","nonce":"n","k":"kick"}`))
	f.Add([]byte(`{"v":1,"k":"send","to":["b"]}`))
	f.Add([]byte(`{"v":12,"k":"kick","v":0}`))
	f.Add([]byte(`{"v":2,"k":"batch"}`))
	f.Add([]byte(`{"k":"send","to":["b"],"echo":"a","id":"x","pos":["E.1"],"epos":"E.2"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast NodeMsg
		if !decodeHeaderFast(b, &fast) {
			return
		}
		var slow NodeMsg
		if err := json.Unmarshal(b, &slow); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json refused it: %v", b, err)
		}
		if fmt.Sprintf("%#v", fast) != fmt.Sprintf("%#v", slow) {
			t.Fatalf("%q: fast %+v, encoding/json %+v", b, fast, slow)
		}
	})
}

func TestHeaderFastPathTakesOurEncoding(t *testing.T) {
	h := NodeMsg{Version: NodeMsgVersion, Kind: KindSend, To: []string{"b", "c"}, Echo: "a", Receipt: "a", ID: "01J"}
	var got NodeMsg
	if !decodeHeaderFast(EncodeNodeMsg(h), &got) || fmt.Sprint(got) != fmt.Sprint(h) {
		t.Fatalf("fast path did not take %s: %+v", EncodeNodeMsg(h), got)
	}
}

// The two halves a connect script wraps around the record's meta are the
// event's JSON exactly, with and without a meta.
func TestEncodeAroundMeta(t *testing.T) {
	for _, e := range []Event{
		{Type: EventOnline, Client: "bob", Node: "node-b", Conns: 1, TS: 1732340000123},
		{Type: EventOffline, Client: "用户<&>", Node: "n\u2028", Conns: 0, TS: 1, Reason: ReasonClosed},
	} {
		head, tail := e.EncodeAroundMeta()
		if got, want := string(head)+string(tail), string(e.Encode()); got != want {
			t.Errorf("without meta: %s, want %s", got, want)
		}
		for _, meta := range []string{"x", `{"name":"Bob"}`, "<\u2028\\\"\x01&>"} {
			m, _ := json.Marshal(meta)
			e.Meta = meta
			if got, want := string(head)+`,"meta":`+string(m)+string(tail), string(e.Encode()); got != want {
				t.Errorf("meta %q: %s, want %s", meta, got, want)
			}
		}
	}
}

func TestClientFromQuery(t *testing.T) {
	for q, want := range map[string]string{
		"token=" + NewToken() + "&client=bob": "bob",
		"client=%E7%94%A8%E6%88%B7":           "用户",
		"":                                    "",
		"client=":                             "",
		"client=a&client=b":                   "",
		"client=a%20b":                        "",
		"client=%zz":                          "",
		"client=" + strings.Repeat("a", 129):  "",
	} {
		if got := ClientFromQuery(q); got != want {
			t.Errorf("ClientFromQuery(%q) = %q, want %q", q, got, want)
		}
	}
}
