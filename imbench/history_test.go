package main

import "testing"

func TestHistoryOptions(t *testing.T) {
	if h, err := historyOptions("client"); err != nil || h != nil {
		t.Fatalf("client: %+v %v", h, err)
	}
	h, err := historyOptions("off")
	if err != nil || len(h.Clients) != 1 || h.Clients[0].Size != 0 || len(h.Channels) != 0 {
		t.Fatalf("off: %+v %v", h, err)
	}
	h, err = historyOptions("channel")
	if err != nil || h.Clients[0].Size != 0 || len(h.Channels) != 1 || h.Channels[0].Prefix != benchChan || h.Channels[0].Size != 100 {
		t.Fatalf("channel: %+v %v", h, err)
	}
	h, err = historyOptions("both")
	if err != nil || h.Clients != nil || len(h.Channels) != 1 {
		t.Fatalf("both: %+v %v", h, err)
	}
	if _, err := historyOptions("x"); err == nil {
		t.Fatal("x accepted")
	}
}

func TestIsRecovered(t *testing.T) {
	f := []byte(`{"type":"recovered","first":true,"streams":[{"channel":"","epoch":"E","offset":3,"recovered":true},{"channel":"bench","epoch":"F","offset":0,"recovered":false}]}`)
	if !isRecovered(f) {
		t.Fatal("recovered frame not recognised")
	}
	if _, ok := parseFrame(f); ok {
		t.Fatal("recovered frame parsed as a benchmark message")
	}
	if isRecovered([]byte(`{"type":"message","id":"x"}`)) {
		t.Fatal("message taken for recovered")
	}
}
