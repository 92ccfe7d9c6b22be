// Command imbench is the load tool of the broker: it starts (or targets)
// imserver nodes and a private redis-server, opens WebSocket connections from
// several load processes and source addresses, runs one scenario and prints
// one table (optionally as Markdown).
//
//	go run ./imbench -scenario idle -conns 15000
//	go run ./imbench -scenario connect -conns 15000 -dialers 200
//	go run ./imbench -scenario fanout -members 10000 -rates 1,10,20,30
//	go run ./imbench -scenario p2p -conns 10000 -rates 10000,50000,100000
//	go run ./imbench -scenario p2p -conns 10000 -rates 10000,50000,100000 -batch 16
//	go run ./imbench -scenario burst -conns 10000
//	go run ./imbench -scenario storm -conns 10000 -missed 10
//	go run ./imbench -scenario nodekill -nodes 6 -conns 100000 -cluster
//
// docs/benchmarks.md lists the figures and the exact commands.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	scenario   string
	nodes      int
	conns      int
	members    int
	dialers    int
	perProc    int
	locals     int
	payload    int
	rates      string
	step       time.Duration
	drain      time.Duration
	publishers int
	batch      int
	window     time.Duration
	timeout    time.Duration
	maxP99     time.Duration
	md         string
	jsonOut    string
	redisURL   string
	cluster    bool
	masters    int
	admins     string
	nodePIDs   string
	bin        string
	nodeArgs   string
	profile    string
	cpuprofile string
	plot       string
	plotData   string
	history    string
	missed     int
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "worker":
			if err := runWorker(); err != nil {
				fmt.Fprintln(os.Stderr, "worker:", err)
				os.Exit(1)
			}
			return
		case "node":
			if err := runNode(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, "node:", err)
				os.Exit(1)
			}
			return
		}
	}
	var o options
	fs := flag.NewFlagSet("imbench", flag.ExitOnError)
	fs.StringVar(&o.scenario, "scenario", "", "idle, connect, fanout, p2p, burst, storm or nodekill")
	fs.IntVar(&o.nodes, "nodes", 1, "imserver nodes to start")
	fs.IntVar(&o.conns, "conns", 2000, "connections (idle, connect, p2p, burst)")
	fs.IntVar(&o.members, "members", 2000, "channel members (fanout)")
	fs.IntVar(&o.dialers, "dialers", 200, "concurrent dialers (burst: 0 means one per client, capped at 4000)")
	fs.IntVar(&o.perProc, "per-proc", 7500, "most sockets per load process (open-files limit is 20000)")
	fs.IntVar(&o.locals, "locals", 4, "loopback source addresses per load process (127.0.0.2, …)")
	fs.IntVar(&o.payload, "payload", 100, "payload bytes")
	fs.StringVar(&o.rates, "rates", "", "rate steps in msg/s (default fanout 1,10,20,30,40; p2p 5000,10000,20000,40000,60000,80000,100000)")
	fs.DurationVar(&o.step, "step", 10*time.Second, "duration of one rate step")
	fs.DurationVar(&o.drain, "drain", 5*time.Second, "longest wait for a step's last deliveries")
	fs.IntVar(&o.publishers, "publishers", 64, "concurrent publishers (p2p)")
	fs.IntVar(&o.batch, "batch", 1, "p2p: messages per send call: 1 sends each with SendMessage, N > 1 sends N at a time with SendMessages")
	fs.DurationVar(&o.window, "window", 30*time.Second, "idle measurement window (longer than the ping interval)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "hard deadline of the whole run")
	fs.DurationVar(&o.maxP99, "max-p99", time.Second, "stop raising the rate after a step whose p99 is above this or that lost messages")
	fs.StringVar(&o.md, "md", "", "also write the table as Markdown to this file")
	fs.StringVar(&o.jsonOut, "json", "", "also write the rows as JSON (input of -plot)")
	fs.BoolVar(&o.cluster, "cluster", false, "start a local Redis Cluster (-masters masters, one replica each) instead of one redis-server")
	fs.IntVar(&o.masters, "masters", 3, "-cluster: masters (at least 3), each with one replica")
	fs.StringVar(&o.redisURL, "redis-url", "", "target this Redis and its registered nodes instead of starting them")
	fs.StringVar(&o.admins, "admin", "", "with -redis-url: comma-separated admin host:port of the nodes (for /metrics)")
	fs.StringVar(&o.nodePIDs, "node-pids", "", "with -redis-url: comma-separated node pids (for RSS and CPU)")
	fs.StringVar(&o.bin, "imserver-bin", "", "run this imserver binary for nodes (default: imbench's node mode, the same imserver code plus pprof)")
	fs.StringVar(&o.nodeArgs, "node-args", "", "extra imserver flags, space-separated")
	fs.StringVar(&o.profile, "profile", "", "directory for node CPU and heap profiles (node mode)")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "CPU profile of imbench's own coordinator process")
	fs.StringVar(&o.plot, "plot", "", "draw latency against rate from -plot-data JSON files into this PNG and exit")
	fs.StringVar(&o.plotData, "plot-data", "", "comma-separated JSON files written by -json")
	fs.IntVar(&o.missed, "missed", 10, "storm: messages each client misses while away")
	fs.StringVar(&o.history, "history", "client", "imhelper history of the load: off, client (imhelper's default: personal 100/2m), channel (the fan-out channel 100/2m, no personal) or both")
	_ = fs.Parse(os.Args[1:])
	if _, err := historyOptions(o.history); err != nil {
		fmt.Fprintln(os.Stderr, "imbench:", err)
		os.Exit(2)
	}
	if o.masters < 3 {
		fmt.Fprintln(os.Stderr, "imbench: -masters: a Redis Cluster needs at least 3 masters")
		os.Exit(2)
	}

	if o.plot != "" {
		if err := plotFiles(o.plot, strings.Split(o.plotData, ",")); err != nil {
			fmt.Fprintln(os.Stderr, "plot:", err)
			os.Exit(1)
		}
		return
	}
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	t, rows, err := run(ctx, o)
	if t != nil {
		t.Command = "go run ./imbench " + strings.Join(os.Args[1:], " ")
		t.Print(os.Stdout)
		if o.md != "" {
			f, ferr := os.Create(o.md)
			if ferr == nil {
				t.Markdown(f)
				f.Close()
			}
		}
		if o.jsonOut != "" {
			b, _ := json.MarshalIndent(rows, "", " ")
			_ = os.WriteFile(o.jsonOut, b, 0o644)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "imbench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// plotRow is one rate step, for -json and -plot.
type plotRow struct {
	Scenario string  `json:"scenario"`
	Rate     float64 `json:"rate"`       // achieved msg/s
	Deliv    float64 `json:"deliveries"` // deliveries/s
	P50      float64 `json:"p50_ms"`
	P99      float64 `json:"p99_ms"`
	P999     float64 `json:"p999_ms"`
}

func run(ctx context.Context, o options) (*Table, []plotRow, error) {
	e, err := newEnv(ctx, o)
	if e != nil {
		defer e.close()
	}
	if err != nil {
		return nil, nil, err
	}
	// Watchdog: whatever happens, the run ends shortly after its deadline.
	wd := time.AfterFunc(o.timeout+time.Minute, func() {
		fmt.Fprintln(os.Stderr, "imbench: watchdog: hard deadline passed, killing children")
		e.close()
		os.Exit(3)
	})
	defer wd.Stop()
	switch o.scenario {
	case "idle":
		return e.idle(ctx)
	case "connect":
		return e.connect(ctx, false)
	case "burst":
		return e.connect(ctx, true)
	case "fanout":
		return e.fanout(ctx)
	case "p2p":
		return e.p2p(ctx)
	case "storm":
		return e.storm(ctx)
	case "nodekill":
		return e.nodekill(ctx)
	default:
		return nil, nil, fmt.Errorf("unknown -scenario %q (idle, connect, fanout, p2p, burst, storm, nodekill)", o.scenario)
	}
}

func parseRates(s, def string) ([]float64, error) {
	if s == "" {
		s = def
	}
	var out []float64
	for _, p := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("bad rate %q", p)
		}
		out = append(out, v)
	}
	if len(out) >= maxSteps {
		return nil, fmt.Errorf("at most %d rate steps", maxSteps-1)
	}
	return out, nil
}
