package wire

import (
	"errors"
	"strings"
	"testing"
	"unsafe"
)

// testBatch is the example of docs/protocol.md §9, "The batch".
func testBatch() []BatchSend {
	const id1, id2 = "01JDBR5980X6T9M2R4B5C7E8FA", "01JDBR59A1B2C3D4E5F6G7H8JK"
	return []BatchSend{
		{Header: NodeMsg{Kind: KindSend, To: []string{"bob"}, ID: id1, Pos: []string{"Xk3fQ2ab-_1.17"}},
			Frame: MessageFrame(id1, "feed", nil, 1732340000000, []byte(`{"n":1}`))},
		{Header: NodeMsg{Kind: KindSend, To: []string{"bob", "carol"}, Echo: "alice", Receipt: "alice", ID: id2, Pos: []string{"Xk3fQ2ab-_1.18", ""}, EchoPos: "Qw7_a1b2c3d.4"},
			Frame: MessageFrame(id2, "alice", nil, 1732340000001, []byte(`{"text":"hi"}`)),
			Echo:  MessageFrame(id2, "alice", []string{"bob", "carol"}, 1732340000001, []byte(`{"text":"hi"}`))},
	}
}

// The bytes of a batch, as docs/protocol.md §9 shows them.
func TestBatchGolden(t *testing.T) {
	want := `{"v":2,"k":"batch"}
{"k":"send","to":["bob"],"id":"01JDBR5980X6T9M2R4B5C7E8FA","pos":["Xk3fQ2ab-_1.17"]}
{"type":"message","id":"01JDBR5980X6T9M2R4B5C7E8FA","from":"feed","ts":1732340000000,"data":{"n":1}}
{"k":"send","to":["bob","carol"],"echo":"alice","rcpt":"alice","id":"01JDBR59A1B2C3D4E5F6G7H8JK","pos":["Xk3fQ2ab-_1.18",""],"epos":"Qw7_a1b2c3d.4"}
{"type":"message","id":"01JDBR59A1B2C3D4E5F6G7H8JK","from":"alice","ts":1732340000001,"data":{"text":"hi"}}
{"type":"message","id":"01JDBR59A1B2C3D4E5F6G7H8JK","from":"alice","to":["bob","carol"],"ts":1732340000001,"data":{"text":"hi"}}`
	if got := string(EncodeBatch(0, testBatch())); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if got := string(EncodeBatch(1, testBatch()[:1])); !strings.HasPrefix(got, `{"v":2,"k":"batch"}`) {
		t.Fatalf("a batch written below its version: %s", got)
	}
}

// Decoding gives back each send, with frames that alias the message (no
// copy) and cannot be appended to over the next line.
func TestBatchRoundTrip(t *testing.T) {
	msg := EncodeBatch(0, testBatch())
	h, frames, err := DecodeNodeMsg(msg)
	if err != nil || h.Kind != KindBatch || h.Version != NodeMsgVersion || frames != nil || len(h.Sends) != 2 {
		t.Fatalf("%+v %q %v", h, frames, err)
	}
	within := func(f []byte) bool {
		p, start := uintptr(unsafe.Pointer(unsafe.SliceData(f))), uintptr(unsafe.Pointer(unsafe.SliceData(msg)))
		return p >= start && p+uintptr(len(f)) <= start+uintptr(len(msg))
	}
	for i, want := range testBatch() {
		got := h.Sends[i]
		if !sameHeader(got.Header, want.Header) || got.Header.Version != NodeMsgVersion ||
			string(got.Frame) != string(want.Frame) || string(got.Echo) != string(want.Echo) {
			t.Errorf("send %d: %+v, want %+v", i, got, want)
		}
		for _, f := range [][]byte{got.Frame, got.Echo} {
			if f == nil {
				continue
			}
			if !within(f) {
				t.Errorf("send %d: frame %q was copied", i, f)
			}
			if cap(f) != len(f) {
				t.Errorf("send %d: frame %q has room to grow into the next line", i, f)
			}
		}
	}
	// Another language's producer may concatenate the send messages it
	// would have published, versions and all.
	b := AppendBatchHead(nil, 2)
	for _, s := range testBatch() {
		s.Header.Version = 1
		frames := [][]byte{s.Frame}
		if s.Echo != nil {
			frames = append(frames, s.Echo)
		}
		b = append(append(b, '\n'), EncodeNodeMsg(s.Header, frames...)...)
	}
	h, _, err = DecodeNodeMsg(b)
	if err != nil || len(h.Sends) != 2 || h.Sends[1].Header.Version != 1 || string(h.Sends[1].Echo) != string(testBatch()[1].Echo) {
		t.Fatalf("concatenated send messages: %+v %v", h, err)
	}
	if _, _, err := DecodeNodeMsg(b[:len(b)-len(testBatch()[1].Echo)-1]); !errors.Is(err, ErrMalformed) {
		t.Errorf("a send without its echo frame: %v", err)
	}
}

func TestBatchMalformed(t *testing.T) {
	frame := `{"type":"message"}`
	for name, msg := range map[string]string{
		"no sends":             `{"v":2,"k":"batch"}`,
		"an empty line":        `{"v":2,"k":"batch"}` + "\n",
		"version 1":            `{"v":1,"k":"batch"}` + "\n" + `{"k":"send","to":["b"]}` + "\n" + frame,
		"unversioned":          `{"k":"batch"}` + "\n" + `{"k":"send","to":["b"]}` + "\n" + frame,
		"a kick inside":        `{"v":2,"k":"batch"}` + "\n" + `{"k":"kick","c":"a"}`,
		"a batch inside":       `{"v":2,"k":"batch"}` + "\n" + `{"v":2,"k":"batch"}` + "\n" + `{"k":"send","to":["b"]}` + "\n" + frame,
		"a send without frame": `{"v":2,"k":"batch"}` + "\n" + `{"k":"send","to":["b"]}`,
		"a missing echo frame": `{"v":2,"k":"batch"}` + "\n" + `{"k":"send","to":["b"],"echo":"a"}` + "\n" + frame,
		"a frame too many":     `{"v":2,"k":"batch"}` + "\n" + `{"k":"send","to":["b"]}` + "\n" + frame + "\n" + frame,
		"a bad frame":          `{"v":2,"k":"batch"}` + "\n" + `{"k":"send","to":["b"]}` + "\n" + "\xff{",
		"bad positions":        `{"v":2,"k":"batch"}` + "\n" + `{"k":"send","to":["b"],"pos":["x",""]}` + "\n" + frame,
		"a header that is not": `{"v":2,"k":"batch"}` + "\n" + frame + "\n" + frame,
	} {
		if _, _, err := DecodeNodeMsg([]byte(msg)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	// A send of a version this node does not read spoils the batch: it
	// cannot know what the send's fields mean.
	if _, _, err := DecodeNodeMsg([]byte(`{"v":2,"k":"batch"}` + "\n" + `{"v":3,"k":"send","to":["b"]}` + "\n" + frame)); !errors.Is(err, ErrUnknownVersion) {
		t.Errorf("a send of version 3: %v, want ErrUnknownVersion", err)
	}
	if IsControlMsg(string(EncodeBatch(0, testBatch()))) {
		t.Error("a batch is data: it may be dropped under overload and filled from history")
	}
}
