//go:build measure

package store

import (
	"context"
	"fmt"
	"strconv"
	"testing"

	"github.com/imbroker/imbroker/internal/wire"
)

// TestMemoryPerClientMeasure (build tag measure: a measurement, not part of
// CI) prints what presence and channel membership cost Redis per client,
// the figures of operations.md's memory sizing.
//
//	go test -tags measure -run TestMemoryPerClientMeasure -v ./internal/store/
func TestMemoryPerClientMeasure(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	used := func() int64 {
		m, err := st.Memory(ctx, "measure")
		if err != nil {
			t.Fatal(err)
		}
		return m.Used
	}
	const n = 20000
	before := used()
	for i := range n {
		id := fmt.Sprintf("user-%06d", i)
		ev := wire.Event{Type: wire.EventOnline, Client: id, Node: "node-1", TS: 1732340000000, Meta: `{"device":"web"}`}
		if _, _, err := st.MarkOnline(ctx, id, "node-1", ev); err != nil {
			t.Fatal(err)
		}
	}
	online := used()
	for i := range n {
		id := fmt.Sprintf("user-%06d", i)
		if _, err := st.Join(ctx, id, []string{"room-" + strconv.Itoa(i%100), "hall"}); err != nil {
			t.Fatal(err)
		}
	}
	joined := used()
	t.Logf("%d clients: %d B each online (presence, its sets, its online event in the stream); %d B per channel membership",
		n, (online-before)/n, (joined-online)/(2*n))
}
