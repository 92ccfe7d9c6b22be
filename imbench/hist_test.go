package main

import (
	"math"
	"testing"
)

func TestBucketRoundTrip(t *testing.T) {
	for _, us := range []uint64{0, 1, 127, 128, 129, 1000, 12345, 999999, 5e6, 1 << 33} {
		v := bucketValue(bucketOf(us))
		if us < histSub && v != float64(us) {
			t.Fatalf("%d: exact bucket gave %v", us, v)
		}
		if rel := math.Abs(v-float64(us)) / math.Max(1, float64(us)); rel > 1.0/64 {
			t.Fatalf("%d µs -> bucket value %v (rel err %.4f)", us, v, rel)
		}
	}
	prev := -1
	for us := uint64(0); us < 1<<20; us += 7 {
		b := bucketOf(us)
		if b < prev {
			t.Fatalf("bucketOf not monotonic at %d", us)
		}
		prev = b
	}
}

func TestQuantiles(t *testing.T) {
	var h Hist
	for i := 1; i <= 1000; i++ { // 1..1000 ms
		h.Record(int64(i) * 1e6)
	}
	c := Counts{}
	c.Add(h.Sparse())
	if c.Total() != 1000 {
		t.Fatalf("total %d", c.Total())
	}
	for _, tc := range []struct{ q, want float64 }{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}} {
		got := c.Quantile(tc.q)
		if math.Abs(got-tc.want)/tc.want > 0.016 {
			t.Errorf("q%.3f = %.2f ms, want ~%.0f", tc.q, got, tc.want)
		}
	}
	if (Counts{}).Quantile(0.5) != -1 {
		t.Error("empty histogram should give -1")
	}
	if got := c.Max(); math.Abs(got-1000)/1000 > 0.016 {
		t.Errorf("max %.2f", got)
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	p := appendPayload(nil, 3, 123456, 1732340000123456789, 42, 100)
	if len(p) != 100 {
		t.Fatalf("payload is %d bytes, want 100: %s", len(p), p)
	}
	frame := []byte(`{"type":"channel","id":"x","from":"a","channel":"b","ts":1,"data":` + string(p) + `}`)
	m, ok := parseFrame(frame)
	if !ok || m.step != 3 || m.seq != 123456 || m.sent != 1732340000123456789 || m.to != 42 {
		t.Fatalf("parse gave %+v %v", m, ok)
	}
	p = appendPayload(nil, 1, 2, 3, -1, 100)
	if m, ok := parseFrame([]byte(`{"data":` + string(p) + `}`)); !ok || m.to != -1 {
		t.Fatalf("negative receiver: %+v %v", m, ok)
	}
	if _, ok := parseFrame([]byte(`{"type":"receipt"}`)); ok {
		t.Fatal("frame without data parsed")
	}
}
