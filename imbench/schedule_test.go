package main

import (
	"sort"
	"testing"
)

// The batch publishers' calls must not bunch up: with P publishers sending
// B messages per call, consecutive calls of the whole step are B/P message
// intervals apart (bunched, all P came within one interval), and no call is
// later than its last message's own due time.
func TestBatchDueSpreadsCalls(t *testing.T) {
	const B, P, mine = 16, 64, 100
	var first []float64
	for p := range P {
		for j := 0; j < mine; j += B {
			n := min(B, mine-j)
			at := batchDue(j, n, B, p, P)
			if last := float64(j+n-1) + float64(p)/float64(P); at > last+1e-9 {
				t.Fatalf("publisher %d call at %d: due %.3f after its last message's %.3f", p, j, at, last)
			}
			if at < float64(j)-1e-9 {
				t.Fatalf("publisher %d call at %d: due %.3f before its first message's %d", p, j, at, j)
			}
			if j == 0 {
				first = append(first, at)
			}
		}
	}
	sort.Float64s(first)
	for i := 1; i < len(first); i++ {
		if gap := first[i] - first[i-1]; gap < float64(B)/float64(P)-1e-9 {
			t.Fatalf("first calls %.3f and %.3f are %.3f intervals apart, want %.3f", first[i-1], first[i], gap, float64(B)/float64(P))
		}
	}
}
