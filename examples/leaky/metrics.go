package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
)

type metricSpec struct {
	name, kind, help string
	source           string // runtime/metrics name
}

// runtimeMetrics are exported with the names Prometheus' client_golang gives them, so
// queries written for real services work against leaky unchanged.
var runtimeMetrics = []metricSpec{
	{"go_gc_gomemlimit_bytes", "gauge", "Go runtime memory limit (GOMEMLIMIT).", "/gc/gomemlimit:bytes"},
	{"go_gc_gogc_percent", "gauge", "Heap size target percentage (GOGC).", "/gc/gogc:percent"},
	{"go_gc_heap_live_bytes", "gauge", "Heap memory occupied by live objects at the last GC.", "/gc/heap/live:bytes"},
	{"go_gc_heap_goal_bytes", "gauge", "Heap size target for the end of the GC cycle.", "/gc/heap/goal:bytes"},
	{"go_gc_cycles_total_gc_cycles_total", "counter", "Count of completed GC cycles.", "/gc/cycles/total:gc-cycles"},
	{"go_cpu_classes_gc_total_cpu_seconds_total", "counter", "Estimated CPU time spent in GC.", "/cpu/classes/gc/total:cpu-seconds"},
	{"go_cpu_classes_gc_mark_idle_cpu_seconds_total", "counter", "Estimated CPU time spent by GC mark workers on otherwise idle Ps.", "/cpu/classes/gc/mark/idle:cpu-seconds"},
	{"go_cpu_classes_total_cpu_seconds_total", "counter", "Estimated total available CPU time.", "/cpu/classes/total:cpu-seconds"},
	{"go_gc_limiter_last_enabled_gc_cycle", "gauge", "GC cycle the GC CPU limiter was last enabled (0 = never).", "/gc/limiter/last-enabled:gc-cycle"},
	{"go_memory_classes_heap_objects_bytes", "gauge", "Memory occupied by live and unswept heap objects.", "/memory/classes/heap/objects:bytes"},
	{"go_memory_classes_total_bytes", "gauge", "All memory mapped by the Go runtime.", "/memory/classes/total:bytes"},
	{"go_sched_goroutines_goroutines", "gauge", "Count of live goroutines.", "/sched/goroutines:goroutines"},
}

func writeMetrics(w io.Writer, leak *leaker) {
	samples := make([]metrics.Sample, len(runtimeMetrics))
	for i, m := range runtimeMetrics {
		samples[i].Name = m.source
	}
	metrics.Read(samples)
	for i, m := range runtimeMetrics {
		var value string
		switch samples[i].Value.Kind() {
		case metrics.KindUint64:
			value = strconv.FormatUint(samples[i].Value.Uint64(), 10)
		case metrics.KindFloat64:
			value = strconv.FormatFloat(samples[i].Value.Float64(), 'g', -1, 64)
		default:
			continue // not supported by this Go version
		}
		writeMetric(w, m.name, m.kind, m.help, value)
	}
	writeMetric(w, "leaky_leaked_bytes", "gauge", "Bytes currently held by the leak.", strconv.FormatInt(leak.leaked(), 10))
	writeMetric(w, "leaky_leak_rate_bytes", "gauge", "Configured leak rate in bytes per second.", strconv.FormatInt(leak.rate, 10))
	if rss, ok := residentBytes(); ok {
		writeMetric(w, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", strconv.FormatInt(rss, 10))
	}
}

func writeMetric(w io.Writer, name, kind, help, value string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", name, help, name, kind, name, value)
}

// residentBytes reads RSS from /proc/self/statm (Linux only; absent elsewhere).
func residentBytes() (int64, bool) {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(data))
	if len(fields) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * int64(os.Getpagesize()), true
}

// runtimeSettings reports the effective GOMEMLIMIT and GOGC, as the runtime sees them.
func runtimeSettings() (limit, gogc string) {
	l := debug.SetMemoryLimit(-1) // a negative value only reads the limit
	limit = strconv.FormatInt(l, 10)
	if l == math.MaxInt64 {
		limit += " (unlimited)"
	}
	// SetGCPercent has no read-only form: set and restore at once, before any work starts.
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	gogc = strconv.Itoa(p)
	if p < 0 {
		gogc = "off"
	}
	return limit, gogc
}
