package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// The spiral pattern: the GC death spiral that no OOM-kill detector sees. The live heap is
// filled at once to just under GOMEMLIMIT with pointer-rich records (so every GC cycle has
// to mark all of them), then held there while short-lived garbage is allocated at the
// configured rate. The heap goal is pinned near GOMEMLIMIT, the headroom between the live
// heap and the goal is a few MiB, so the GC starts a new cycle after every few MiB of
// garbage: it runs nearly nonstop, while RSS stays flat under the container limit.

// sessionRecord is one retained record: pointers the GC must follow on every cycle.
type sessionRecord struct {
	id      int64
	owner   *sessionRecord
	peers   [4]*sessionRecord
	payload []byte
}

// recordPayload is each record's own byte buffer (not scanned, but counted in the heap).
const recordPayload = 96

var sessionIndex []*sessionRecord // held for the life of the process: the live heap

// spiralFill is the default share of GOMEMLIMIT the spiral pattern keeps live.
const spiralFill = 0.9

// spiralTarget is the live heap the spiral pattern holds: max when set, else spiralFill of
// GOMEMLIMIT. Without either there is no limit to spiral against: an error.
func spiralTarget(max int64) (int64, error) {
	if max > 0 {
		return max, nil
	}
	limit := debug.SetMemoryLimit(-1)
	if limit <= 0 || limit == 1<<63-1 {
		return 0, fmt.Errorf("pattern spiral: set GOMEMLIMIT (or -max, the live heap to hold)")
	}
	return int64(float64(limit) * spiralFill), nil
}

// recordBytes is what one record costs the heap: its size class (80), its payload's
// (96) and its slot in sessionIndex (8).
const recordBytes = 80 + recordPayload + 8

// hoardSessionIndex retains n bytes of pointer-rich records: the live heap of the spiral.
//
//go:noinline
func hoardSessionIndex(n int64) {
	sessionIndex = make([]*sessionRecord, 0, max(n/recordBytes, 0))
	var previous *sessionRecord
	for n > 0 {
		r := &sessionRecord{id: int64(len(sessionIndex)), owner: previous, payload: make([]byte, recordPayload)}
		r.payload[0] = 1
		for i := range r.peers {
			if len(sessionIndex) > 0 {
				r.peers[i] = sessionIndex[(len(sessionIndex)*(i+7))%len(sessionIndex)]
			}
		}
		sessionIndex = append(sessionIndex, r)
		previous = r
		leakedBytes.Add(recordBytes)
		n -= recordBytes
	}
}

var spiralSink atomic.Uint64

// spiral fills the live heap to target (counting what the process already holds: the
// lookup table, the runtime's own objects), then allocates garbage at rate bytes per
// second, in 10 ms ticks, until done.
func spiral(done <-chan struct{}, target, rate int64) {
	runtime.GC()
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	hoardSessionIndex(target - int64(stats.HeapAlloc))
	paced(done, 10*time.Millisecond, rate, func(due int64) int64 {
		for left := due; left > 0; left -= 16 << 10 {
			spiralSink.Add(renderSessionPage(int(min(left, 16<<10))))
		}
		return due
	})
}

// renderSessionPage is the spiral's garbage: a buffer used once and dropped.
//
//go:noinline
func renderSessionPage(size int) uint64 {
	buf := make([]byte, size)
	for i := 0; i < len(buf); i += 512 {
		buf[i] = byte(i)
	}
	return uint64(buf[len(buf)-1]) + uint64(len(buf))
}
