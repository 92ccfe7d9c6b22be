package main

import (
	"math/bits"
	"sync/atomic"
)

// Latencies are recorded in microseconds into a log-linear histogram: values
// below 128 µs are exact, larger ones fall into 64 buckets per power of two
// (relative error under 1.6 %). Histograms merge by adding counts, so every
// load process keeps its own and the coordinator sums them.
const (
	histSubBits = 7
	histSub     = 1 << histSubBits // 128
	histHalf    = histSub / 2      // 64 buckets per octave above histSub
	histBuckets = histSub + 40*histHalf
)

func bucketOf(us uint64) int {
	if us < histSub {
		return int(us)
	}
	e := bits.Len64(us) - histSubBits // >= 1
	m := us >> uint(e)                // in [64, 128)
	i := histSub + (e-1)*histHalf + int(m-histHalf)
	if i >= histBuckets {
		return histBuckets - 1
	}
	return i
}

// bucketValue returns the middle of bucket i in microseconds.
func bucketValue(i int) float64 {
	if i < histSub {
		return float64(i)
	}
	e := (i-histSub)/histHalf + 1
	m := uint64((i-histSub)%histHalf + histHalf)
	lo := m << uint(e)
	return float64(lo) + float64(uint64(1)<<uint(e))/2
}

// Hist is safe for concurrent Record calls.
type Hist struct {
	counts [histBuckets]atomic.Uint64
}

// Record adds one latency in nanoseconds (negative counts as zero).
func (h *Hist) Record(ns int64) {
	if ns < 0 {
		ns = 0
	}
	h.counts[bucketOf(uint64(ns/1000))].Add(1)
}

// Sparse returns the non-empty buckets, for sending to the coordinator.
func (h *Hist) Sparse() map[int]uint64 {
	out := map[int]uint64{}
	for i := range h.counts {
		if n := h.counts[i].Load(); n > 0 {
			out[i] = n
		}
	}
	return out
}

// Counts is a plain (not concurrent) merged histogram.
type Counts map[int]uint64

func (c Counts) Add(o map[int]uint64) {
	for i, n := range o {
		c[i] += n
	}
}

func (c Counts) Total() uint64 {
	var t uint64
	for _, n := range c {
		t += n
	}
	return t
}

// Quantile returns the q-quantile (0 < q <= 1) in milliseconds, or -1 when
// the histogram is empty. It uses the nearest-rank definition.
func (c Counts) Quantile(q float64) float64 {
	total := c.Total()
	if total == 0 {
		return -1
	}
	rank := uint64(q*float64(total) + 0.999999999)
	if rank < 1 {
		rank = 1
	}
	if rank > total {
		rank = total
	}
	var cum uint64
	for i := 0; i < histBuckets; i++ {
		cum += c[i]
		if cum >= rank {
			return bucketValue(i) / 1000
		}
	}
	return bucketValue(histBuckets-1) / 1000
}

// Max returns the largest recorded bucket in milliseconds, -1 if empty.
func (c Counts) Max() float64 {
	m := -1
	for i, n := range c {
		if n > 0 && i > m {
			m = i
		}
	}
	if m < 0 {
		return -1
	}
	return bucketValue(m) / 1000
}
