package wire

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestNodeMsgVersion(t *testing.T) {
	// Written by releases before the version field: read as version 1.
	h, _, err := DecodeNodeMsg([]byte(`{"k":"kick","c":"a"}`))
	if err != nil || h.Version != 1 {
		t.Fatalf("unversioned header: %+v, %v", h, err)
	}
	if !bytes.HasPrefix(EncodeNodeMsg(NodeMsg{Kind: KindProbe}), []byte(`{"v":`+strconv.Itoa(NodeMsgVersion)+`,"k":"probe"`)) {
		t.Fatalf("encoder does not lead with the version: %s", EncodeNodeMsg(NodeMsg{Kind: KindProbe}))
	}
	if !bytes.HasPrefix(EncodeNodeMsg(NodeMsg{Version: 1, Kind: KindProbe}), []byte(`{"v":1,"k":"probe"`)) {
		t.Fatalf("encoder does not write the version asked for: %s", EncodeNodeMsg(NodeMsg{Version: 1, Kind: KindProbe}))
	}
	next := strconv.Itoa(NodeMsgVersion + 1)
	for _, msg := range []string{`{"v":` + next + `,"k":"kick","c":"a"}`, `{"k":"kick","c":"a","v":99}`, `{"v": ` + next + `, "k":"kick","c":"a"}`} {
		if _, _, err := DecodeNodeMsg([]byte(msg)); !errors.Is(err, ErrUnknownVersion) {
			t.Errorf("%s: err = %v, want ErrUnknownVersion", msg, err)
		}
	}
	for _, msg := range []string{`{"v":-1,"k":"kick","c":"a"}`, `{"v":"1","k":"kick","c":"a"}`, `{"v":1.5,"k":"kick","c":"a"}`} {
		if _, _, err := DecodeNodeMsg([]byte(msg)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", msg, err)
		}
	}
}

func TestCommonVersion(t *testing.T) {
	// Nodes of releases before the field announce nothing: version 1.
	if v := CommonVersion([]NodeInfo{{ID: "a", Proto: 0}, {ID: "b", Proto: NodeMsgVersion + 1}}); v != 1 {
		t.Errorf("CommonVersion = %d, want 1", v)
	}
	if v := CommonVersion(nil); v != NodeMsgVersion {
		t.Errorf("CommonVersion(no nodes) = %d, want %d", v, NodeMsgVersion)
	}
}

func TestIsControlMsg(t *testing.T) {
	for kind, want := range map[string]bool{KindJoin: true, KindLeave: true, KindKick: true, KindProbe: true, KindSend: false, KindDeliver: false} {
		msg := string(EncodeNodeMsg(NodeMsg{Kind: kind, Client: "a", To: []string{"b"}}))
		if got := IsControlMsg(msg); got != want {
			t.Errorf("IsControlMsg(%s) = %v, want %v", msg, got, want)
		}
	}
	if !IsControlMsg(`{"k":"join","c":"a"}`) || IsControlMsg(`{"type":"channel"}`) || IsControlMsg(`{"k":"joi`) {
		t.Error("IsControlMsg misreads an unversioned or foreign message")
	}
}

func TestCompactPayload(t *testing.T) {
	got, err := CompactPayload([]byte(" { \"a\" : [1, 2] } "), 100)
	if err != nil || string(got) != `{"a":[1,2]}` {
		t.Fatalf("got %s, %v", got, err)
	}
	for _, bad := range []string{"a\xffb", `"a` + "\xff" + `b"`, "{\"k\":\"\xc3\"}"} {
		if _, err := CompactPayload([]byte(bad), 100); !errors.Is(err, ErrPayloadNotUTF8) || !errors.Is(err, ErrBadPayload) {
			t.Errorf("%q: err = %v, want ErrPayloadNotUTF8 (an ErrBadPayload)", bad, err)
		}
	}
	if _, err := CompactPayload([]byte(`{"a":`), 100); !errors.Is(err, ErrBadPayload) {
		t.Errorf("truncated JSON: %v", err)
	}
	if _, err := CompactPayload([]byte(`"`+strings.Repeat("x", 100)+`"`), 100); !errors.Is(err, ErrTooBig) {
		t.Errorf("oversized: %v", err)
	}
}

// Whatever CompactPayload accepts is a frame a node will deliver.
func FuzzCompactPayload(f *testing.F) {
	f.Add([]byte(`{"a":1}`))
	f.Add([]byte("\"a\xffb\""))
	f.Add([]byte(`"\ud800"`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := CompactPayload(b, DefaultMaxPayload)
		if err != nil {
			return
		}
		if !ValidFrame(MessageFrame("id", "from", nil, 1, p)) || !ValidFrame(ChannelFrame("id", "f", "c", 1, p)) {
			t.Fatalf("accepted %q, but its frame is not deliverable", b)
		}
	})
}

func TestAppendFrameHeader(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want []byte
	}{
		{0, []byte{0x81, 0}},
		{125, []byte{0x81, 125}},
		{126, []byte{0x81, 126, 0, 126}},
		{65535, []byte{0x81, 126, 0xff, 0xff}},
		{65536, []byte{0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0}},
	} {
		if got := AppendFrameHeader(nil, OpText, tc.n); !bytes.Equal(got, tc.want) {
			t.Errorf("n=%d: % x, want % x", tc.n, got, tc.want)
		}
	}
	if got := AppendFrameHeader(nil, OpClose, 2); !bytes.Equal(got, []byte{0x88, 2}) || FrameOpcode(got) != OpClose {
		t.Errorf("close header % x", got)
	}
}

func TestFrameTS(t *testing.T) {
	for _, f := range [][]byte{
		MessageFrame("id", `a,"ts":9`, nil, 1732340000123, []byte(`{"ts":5}`)),
		ChannelFrame("id", "a", "c", 1732340000123, []byte(`1`)),
		BroadcastFrame("id", 1732340000123, []byte(`1`)),
	} {
		if got := FrameTS(f); got != 1732340000123 {
			t.Errorf("FrameTS(%s) = %d", f, got)
		}
	}
	if FrameTS(ReceiptFrame("id", "b", StatusDelivered)) != 0 {
		t.Error("a receipt has no ts")
	}
}
