package main

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// chunkSize is the size of one leaked allocation: large enough to be allocated straight
// from the page heap (so RSS tracks the leak), small enough to be sampled often by the
// heap profiler (runtime.MemProfileRate, 512 KiB by default).
const chunkSize = 64 << 10

// pageSize is the stride used to touch leaked memory so every page becomes resident.
const pageSize = 4096

var (
	sessionMu      sync.Mutex
	sessionBuffers [][]byte // reachable forever: the steady leak

	cacheMu       sync.Mutex
	responseCache = map[string][]byte{} // never evicted: the burst leak

	leakedBytes atomic.Int64
)

// leaker leaks at a fixed average rate, in ticks, until it reaches max (0 = no cap).
type leaker struct {
	rate int64
	max  int64
}

func (l *leaker) leaked() int64 { return leakedBytes.Load() }

func (l *leaker) run(done <-chan struct{}, every time.Duration, leakFn func(n int64)) {
	paced(done, every, l.rate, func(due int64) int64 {
		if l.max > 0 && l.leaked()+due > l.max {
			due = l.max - l.leaked()
		}
		if due > 0 {
			leakFn(due)
		}
		return max(due, 0)
	})
}

// paced calls work every tick with the bytes due at rate per second since start, less
// what it already did (work returns how much it did), so tick jitter does not change the
// rate; until done. A rate of 0 or less does nothing.
func paced(done <-chan struct{}, every time.Duration, rate int64, work func(due int64) int64) {
	if rate <= 0 {
		return
	}
	start := time.Now()
	var did int64
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-ticker.C:
			if due := int64(now.Sub(start).Seconds()*float64(rate)) - did; due > 0 {
				did += work(due)
			}
		}
	}
}

// touch writes one byte per page so the kernel backs the buffer (it counts in RSS).
func touch(buf []byte) {
	for i := 0; i < len(buf); i += pageSize {
		buf[i] = byte(i/pageSize) | 1
	}
}

// retainSessionBuffers is the steady leak: per-session buffers appended to a global slice.
//
//go:noinline
func retainSessionBuffers(n int64) {
	for n > 0 {
		size := min(n, chunkSize)
		buf := make([]byte, size)
		touch(buf)
		sessionMu.Lock()
		sessionBuffers = append(sessionBuffers, buf)
		sessionMu.Unlock()
		leakedBytes.Add(size)
		n -= size
	}
}

// cacheUnboundedResponses is the burst leak: a response cache that never evicts.
//
//go:noinline
func cacheUnboundedResponses(n int64) {
	for n > 0 {
		size := min(n, chunkSize)
		buf := make([]byte, size)
		touch(buf)
		cacheMu.Lock()
		responseCache[fmt.Sprintf("/api/v1/items/%d", len(responseCache))] = buf
		cacheMu.Unlock()
		leakedBytes.Add(size)
		n -= size
	}
}

var churnSink atomic.Uint64

// churnRequestGarbage allocates short-lived buffers, so profiles show freed garbage as
// well as the leak (alloc_space differs from inuse_space) and the GC has work to do.
func churnRequestGarbage(done <-chan struct{}) {
	ticker := time.NewTicker(20 * time.Millisecond)
	defer ticker.Stop()
	for i := 0; ; i++ {
		select {
		case <-done:
			return
		case <-ticker.C:
			churnSink.Add(decodeRequest(4<<10 + (i%16)<<10))
		}
	}
}

//go:noinline
func decodeRequest(size int) uint64 {
	buf := make([]byte, size)
	var sum uint64
	for i := range buf {
		buf[i] = byte(i)
		sum += uint64(buf[i])
	}
	parts := make([]string, 0, 8)
	for j := range 8 {
		parts = append(parts, fmt.Sprintf("field-%d=%d", j, sum))
	}
	return sum + uint64(len(parts))
}

// parkIdleWorkers starts n goroutines that block until done, for goroutine counts.
func parkIdleWorkers(n int, done <-chan struct{}) {
	for range n {
		go parkIdleWorker(done)
	}
}

//go:noinline
func parkIdleWorker(done <-chan struct{}) {
	<-done
}

// lookupTable is legitimately retained memory of fixed size (not a leak), so an in-use
// heap profile has a baseline beside the leak and a diff shows it unchanged.
var lookupTable [][]byte

// buildLookupTable retains size bytes in 16 KiB rows, once at start.
//
//go:noinline
func buildLookupTable(size int) {
	for range size / (16 << 10) {
		row := make([]byte, 16<<10)
		touch(row)
		lookupTable = append(lookupTable, row)
	}
}
