package main

import (
	"math"
	"math/bits"
	"time"
)

// hist is a log-linear latency histogram: 32 sub-buckets per power of two
// (about 3 % resolution) from 1 ns to about 18 minutes, cheap to record.
type hist struct {
	counts [histBuckets]uint64
	n      uint64
	sum    time.Duration
	max    time.Duration
}

const (
	histSub     = 32
	histSubBits = 5
	histExp     = 40
	histBuckets = histExp * histSub
)

func histIndex(d time.Duration) int {
	v := uint64(max(d, 1))
	exp := bits.Len64(v) - 1
	if exp < histSubBits {
		return int(v) // exact below 32 ns
	}
	i := exp*histSub + int((v>>(exp-histSubBits))&(histSub-1))
	return min(i, histBuckets-1)
}

// histValue is the upper bound of bucket i.
func histValue(i int) time.Duration {
	exp, sub := i/histSub, i%histSub
	if exp < histSubBits {
		return time.Duration(i) // exact buckets (indexes above histSub are never used)
	}
	return time.Duration(uint64(histSub+sub+1) << (exp - histSubBits))
}

func (h *hist) add(d time.Duration) {
	h.counts[histIndex(d)]++
	h.n++
	h.sum += d
	h.max = max(h.max, d)
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if c > 0 && seen >= rank {
			return min(histValue(i), h.max)
		}
	}
	return h.max
}

// quantileUS is a quantile in microseconds, or nil without samples: a gap
// in a chart, absent in the JSON.
func (h *hist) quantileUS(q float64) *float64 {
	if h.n == 0 {
		return nil
	}
	v := us(h.quantile(q))
	return &v
}

// bucket is one bar of a latency histogram.
type bucket struct {
	LoUS  float64 `json:"from_us"`
	HiUS  float64 `json:"to_us"`
	Count uint64  `json:"count"`
}

// logBuckets regroups the histogram into 4 buckets per decade (1, 1.8,
// 3.2, 5.6 × 10ⁿ), from the first to the last non-empty one.
func (h *hist) logBuckets() []bucket {
	if h.n == 0 {
		return nil
	}
	const perDecade = 4
	edge := func(k int) float64 { return math.Pow(10, float64(k)/perDecade) } // in ns
	var out []bucket
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		// The bucket's values lie below histValue(i); file them by it.
		k := int(math.Floor(math.Log10(float64(histValue(i))) * perDecade))
		lo := edge(k) / 1e3
		if n := len(out); n > 0 && out[n-1].LoUS == lo {
			out[n-1].Count += c
			continue
		}
		for n := len(out); n > 0 && out[n-1].HiUS < lo*0.999; n = len(out) { // empty buckets between
			out = append(out, bucket{LoUS: out[n-1].HiUS, HiUS: out[n-1].HiUS * math.Pow(10, 1.0/perDecade)})
		}
		out = append(out, bucket{LoUS: lo, HiUS: edge(k+1) / 1e3, Count: c})
	}
	return out
}

// latencySummary is what the report shows of a histogram.
type latencySummary struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean_us"`
	P50   float64 `json:"p50_us"`
	P90   float64 `json:"p90_us"`
	P99   float64 `json:"p99_us"`
	Max   float64 `json:"max_us"`
	// Unfinished of Count were still running (or never started) when the
	// run ended, and count at their age then.
	Unfinished uint64 `json:"unfinished,omitempty"`
}

func us(d time.Duration) float64 { return float64(d) / 1e3 }

func (h *hist) summary() latencySummary {
	s := latencySummary{Count: h.n, P50: us(h.quantile(0.5)), P90: us(h.quantile(0.9)), P99: us(h.quantile(0.99)), Max: us(h.max)}
	if h.n > 0 {
		s.Mean = us(h.sum / time.Duration(h.n))
	}
	return s
}
