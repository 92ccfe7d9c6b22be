package testnode

import "encoding/json"

// Frame is what a client receives on the socket (docs/protocol.md): the
// tests of imserver and of the example decode every frame into it.
type Frame struct {
	Type    string          `json:"type"`
	ID      string          `json:"id"`
	From    string          `json:"from"`
	To      json.RawMessage `json:"to"` // a list on echoed messages, a string on receipts
	Channel string          `json:"channel"`
	TS      int64           `json:"ts"`
	Data    json.RawMessage `json:"data"`
	Status  string          `json:"status"`
	// The position of a message or channel frame of a stream with history.
	Epoch  string `json:"epoch"`
	Offset uint64 `json:"offset"`
	// A recovered frame's.
	First   bool          `json:"first"`
	Streams []StreamState `json:"streams"`
}

// StreamState is one stream of a recovered frame.
type StreamState struct {
	Channel   string `json:"channel"`
	Epoch     string `json:"epoch"`
	Offset    uint64 `json:"offset"`
	Recovered bool   `json:"recovered"`
}

// Stream is the recovered frame's state of channel ("" personal).
func (f Frame) Stream(channel string) (StreamState, bool) {
	for _, s := range f.Streams {
		if s.Channel == channel {
			return s, true
		}
	}
	return StreamState{}, false
}

// DataMap is the frame's data decoded as a JSON object (nil if it is not).
func (f Frame) DataMap() map[string]any {
	var m map[string]any
	_ = json.Unmarshal(f.Data, &m)
	return m
}
