// Command leaky is memwarden's own test workload: a Go HTTP service with a controllable
// memory leak, net/http/pprof and runtime metrics.
//
// Tests, the demo and the kind e2e run it to produce real heap profiles, goroutine dumps,
// traces and cores whose leak sites are known in advance. Standard library only, so it
// builds offline with the machine's Go.
//
// Configuration (a flag wins over its environment variable):
//
//	-listen     LEAKY_LISTEN      address of the HTTP server (default 127.0.0.1:8080)
//	-rate       LEAKY_RATE        leak rate in bytes per second: 8Mi, 512Ki, 1G or plain bytes
//	                              (spiral: the garbage allocated per second once full)
//	-pattern    LEAKY_PATTERN     steady | burst | spiral | none
//	-max        LEAKY_MAX         stop leaking at this many bytes (0 = no cap; spiral: the
//	                              live heap to hold, default 90% of GOMEMLIMIT)
//	-goroutines LEAKY_GOROUTINES  extra parked goroutines
//
// Endpoints: /debug/pprof/..., /metrics (Prometheus text), /healthz.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	listen     string
	rate       int64
	pattern    string
	max        int64
	goroutines int
}

func main() {
	cfg, err := parseConfig(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "leaky: %v\n", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "leaky: %v\n", err)
		os.Exit(1)
	}
}

func envOr(name, fallback string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return fallback
}

func parseConfig(args []string) (config, error) {
	fs := flag.NewFlagSet("leaky", flag.ContinueOnError)
	listen := fs.String("listen", envOr("LEAKY_LISTEN", "127.0.0.1:8080"), "HTTP listen address (env LEAKY_LISTEN)")
	rate := fs.String("rate", envOr("LEAKY_RATE", "1Mi"), "leak rate, bytes per second, e.g. 8Mi (env LEAKY_RATE)")
	pattern := fs.String("pattern", envOr("LEAKY_PATTERN", "steady"), "steady | burst | spiral | none (env LEAKY_PATTERN)")
	maxBytes := fs.String("max", envOr("LEAKY_MAX", "0"), "stop leaking at this many bytes, 0 = no cap (env LEAKY_MAX)")
	goroutines := fs.String("goroutines", envOr("LEAKY_GOROUTINES", "0"), "extra parked goroutines (env LEAKY_GOROUTINES)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	cfg := config{listen: *listen, pattern: *pattern}
	var err error
	if cfg.rate, err = parseSize(*rate); err != nil {
		return config{}, fmt.Errorf("rate: %w", err)
	}
	if cfg.max, err = parseSize(*maxBytes); err != nil {
		return config{}, fmt.Errorf("max: %w", err)
	}
	if cfg.goroutines, err = strconv.Atoi(strings.TrimSpace(*goroutines)); err != nil || cfg.goroutines < 0 {
		return config{}, fmt.Errorf("goroutines: not a non-negative integer: %q", *goroutines)
	}
	switch cfg.pattern {
	case "steady", "burst", "spiral", "none":
	default:
		return config{}, fmt.Errorf("pattern: want steady, burst, spiral or none, got %q", cfg.pattern)
	}
	return cfg, nil
}

var sizeSuffixes = []struct {
	suffix string
	factor int64
}{
	// Longest suffixes first so "MiB" is not read as "B" after "Mi".
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"k", 1e3}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
	{"B", 1},
}

// parseSize reads a Kubernetes quantity (8Mi, 1G), a Go size (8MiB) or plain bytes.
func parseSize(s string) (int64, error) {
	text := strings.TrimSpace(s)
	factor := int64(1)
	for _, u := range sizeSuffixes {
		if strings.HasSuffix(text, u.suffix) {
			text, factor = strings.TrimSuffix(text, u.suffix), u.factor
			break
		}
	}
	n, err := strconv.ParseFloat(text, 64)
	if err != nil || n < 0 || text == "" {
		return 0, fmt.Errorf("not a size: %q (examples: 8Mi, 512Ki, 1G, 1048576)", s)
	}
	return int64(n * float64(factor)), nil
}

func run(cfg config) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	limit, gogc := runtimeSettings()
	fmt.Fprintf(os.Stderr, "leaky: GOMEMLIMIT=%s GOGC=%s rate=%d B/s pattern=%s max=%d goroutines=%d\n",
		limit, gogc, cfg.rate, cfg.pattern, cfg.max, cfg.goroutines)

	var (
		spiralBytes int64
		err         error
	)
	if cfg.pattern == "spiral" {
		if spiralBytes, err = spiralTarget(cfg.max); err != nil {
			return err
		}
	}

	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "leaky: listening on http://%s\n", ln.Addr())

	leak := &leaker{rate: cfg.rate, max: cfg.max}
	buildLookupTable(8 << 20)
	done := make(chan struct{})
	parkIdleWorkers(cfg.goroutines, done)
	go churnRequestGarbage(done)
	switch cfg.pattern {
	case "steady":
		go leak.run(done, 100*time.Millisecond, retainSessionBuffers)
	case "burst":
		go leak.run(done, 2*time.Second, cacheUnboundedResponses)
	case "spiral":
		go spiral(done, spiralBytes, cfg.rate)
	}

	srv := &http.Server{Handler: newMux(leak), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		close(done)
		return err
	case <-ctx.Done():
	}
	fmt.Fprintln(os.Stderr, "leaky: signal received, shutting down")
	close(done)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func newMux(leak *leaker) *http.ServeMux {
	mux := http.NewServeMux()
	// pprof.Index also serves the named profiles: heap, goroutine, allocs, block, mutex.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		writeMetrics(w, leak)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	return mux
}
