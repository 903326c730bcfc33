// Command compare runs deferd's comparison suite: it starts a real nsqd in
// this process, offers the same load to every design in turn (each design
// starts what it needs: its own redis-server, or the deferd binary), and
// writes one markdown table and one PNG chart.
//
// The suite is its own module (github.com/deferd/deferd/benchmarks), so it
// runs from the benchmarks directory; -repo (default "..") is the deferd
// module root that ./cmd/deferd is built from:
//
//	cd benchmarks && go run ./cmd/compare [flags]
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/deferd/deferd/benchmarks"
	"github.com/deferd/deferd/internal/nsqdnode"
)

type options struct {
	designs, scenarios string
	out, repo          string
	deferdBin          string
	deferdArgs         string
	size               int
	progress           time.Duration

	rates      string
	fixedDelay time.Duration
	// bufferedConsumer: see benchmarks.Load.BufferedConsumer (fixed only).
	bufferedConsumer bool
	duration         time.Duration
	burstBuffered    bool
	nsqdMemQueue     int64
	installRedis     bool

	mixedRate          float64
	mixedMin, mixedMax time.Duration
	mixedDuration      time.Duration
	mixedGrace         time.Duration

	burst     int
	burstLead time.Duration

	capacity      int
	capacityDelay time.Duration

	crashRate                float64
	crashDuration            time.Duration
	crashMin, crashMax       time.Duration
	crashAt                  time.Duration
	zsetShards, zsetBatch    int
	zsetInterval             time.Duration
	zsetPollers              int
	luaShards, luaBatch      int
	channelCap, channelWorks int
}

func main() {
	var o options
	flag.StringVar(&o.designs, "designs", "channel,zset-poll,zset-lua,nsqd-defer,wheel,deferd", "comma-separated designs to run, in order")
	flag.StringVar(&o.scenarios, "scenarios", "fixed,mixed,burst,capacity,crash", "comma-separated scenarios to run, in order")
	flag.StringVar(&o.out, "out", "out", "directory for comparison.md, comparison.png and comparison.json")
	flag.StringVar(&o.repo, "repo", "..", "deferd's module root, to build ./cmd/deferd from and to find benchmarks/install-redis.sh")
	flag.StringVar(&o.deferdBin, "deferd-bin", "", "use this deferd binary instead of building ./cmd/deferd")
	flag.StringVar(&o.deferdArgs, "deferd-args", "", "extra flags for deferd, space-separated")
	flag.IntVar(&o.size, "size", 500, "message body size in bytes")
	flag.BoolVar(&o.installRedis, "install-redis", true, "if a ZSET design is selected and redis-server is not on PATH, run benchmarks/install-redis.sh (Debian's package)")
	flag.Int64Var(&o.nsqdMemQueue, "nsqd-mem-queue-size", 1_000_000, "the in-process nsqd's --mem-queue-size: messages per topic and channel held in memory before nsqd spills to its disk queue (sized to hold a 500k burst)")
	flag.DurationVar(&o.progress, "progress", 5*time.Second, "interval of progress lines on stderr (0: none)")

	flag.StringVar(&o.rates, "rates", "1000,4000,16000", "scenario fixed: offered rates in msg/s, one step each")
	flag.DurationVar(&o.fixedDelay, "fixed-delay", time.Second, "scenario fixed: the one delay")
	flag.DurationVar(&o.duration, "duration", 4*time.Second, "scenario fixed: how long each rate is offered")
	flag.BoolVar(&o.bufferedConsumer, "buffered-consumer", false, "scenario fixed: let nsqd buffer writes to the measuring consumer (throughput runs past ~50k msg/s; lateness then includes up to nsqd's flush)")

	flag.Float64Var(&o.mixedRate, "mixed-rate", 2000, "scenario mixed: offered msg/s")
	flag.DurationVar(&o.mixedMin, "mixed-min", 100*time.Millisecond, "scenario mixed: shortest delay")
	flag.DurationVar(&o.mixedMax, "mixed-max", 10*time.Second, "scenario mixed: longest delay (the issue's figure: 60s)")
	flag.DurationVar(&o.mixedDuration, "mixed-duration", 5*time.Second, "scenario mixed: how long the load is offered")
	flag.DurationVar(&o.mixedGrace, "mixed-grace", 30*time.Second, "scenario mixed: wait after the last due time before counting lost")

	flag.IntVar(&o.burst, "burst", 100000, "scenario burst: messages all due in the same millisecond (the issue's figure: 500000)")
	flag.BoolVar(&o.burstBuffered, "burst-buffered", true, "scenario burst: let nsqd buffer writes to the measuring consumer (the burst measures throughput; unbuffered, the consumer path caps every design, nsqd alone included, near 90k msg/s)")
	flag.DurationVar(&o.burstLead, "burst-lead", 12*time.Second, "scenario burst: due time after the start of submission")

	flag.IntVar(&o.capacity, "capacity", 100000, "scenario capacity: pending messages to offer")
	flag.DurationVar(&o.capacityDelay, "capacity-delay", 30*time.Minute, "scenario capacity: their delay (nsqd caps defer at 1h)")

	flag.Float64Var(&o.crashRate, "crash-rate", 1000, "scenario crash: offered msg/s")
	flag.DurationVar(&o.crashDuration, "crash-duration", 6*time.Second, "scenario crash: how long the load is offered")
	flag.DurationVar(&o.crashMin, "crash-min", time.Second, "scenario crash: shortest delay")
	flag.DurationVar(&o.crashMax, "crash-max", 5*time.Second, "scenario crash: longest delay")
	flag.DurationVar(&o.crashAt, "crash-at", 3*time.Second, "scenario crash: when to SIGKILL and restart, after the load starts")

	flag.IntVar(&o.zsetShards, "zset-shards", 1000, "zset-poll: sorted-set shards N")
	flag.IntVar(&o.zsetBatch, "zset-batch", 10, "zset-poll: members per ZRANGEBYSCORE (m)")
	flag.DurationVar(&o.zsetInterval, "zset-interval", 200*time.Millisecond, "zset-poll and zset-lua: poll interval")
	flag.IntVar(&o.zsetPollers, "zset-pollers", 20, "zset-poll and zset-lua: poller goroutines")
	flag.IntVar(&o.luaShards, "lua-shards", 16, "zset-lua: sorted-set shards")
	flag.IntVar(&o.luaBatch, "lua-batch", 500, "zset-lua: members popped per script call")
	flag.IntVar(&o.channelCap, "channel-capacity", 24000, "channel: buffered channel capacity")
	flag.IntVar(&o.channelWorks, "channel-workers", 20, "channel: worker goroutines")
	replot := flag.String("replot", "", "redraw the table and chart from this comparison.json instead of running")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of this process (harness, consumer, in-process nsqd and designs) to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "compare:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "compare:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if *replot != "" {
		if err := redraw(*replot, o.out); err != nil {
			fmt.Fprintln(os.Stderr, "compare:", err)
			os.Exit(1)
		}
		return
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		benchmarks.KillChildren()
		fmt.Fprintln(os.Stderr, "compare: interrupted; killed redis-server and deferd children")
		os.Exit(130)
	}()
	if err := run(o); err != nil {
		pprof.StopCPUProfile()
		benchmarks.KillChildren()
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func run(o options) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if o.installRedis && strings.Contains(o.designs, "zset") {
		if _, err := exec.LookPath("redis-server"); err != nil {
			logf("redis-server not on PATH: running benchmarks/install-redis.sh")
			cmd := exec.Command(filepath.Join(o.repo, "benchmarks", "install-redis.sh"))
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("installing redis-server: %w (or pass -install-redis=false to skip the ZSET designs)", err)
			}
		}
	}
	tmp, err := os.MkdirTemp("", "deferd-compare-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	node, err := nsqdnode.Start(nsqdnode.Config{DataPath: filepath.Join(tmp, "nsqd"), MemQueueSize: o.nsqdMemQueue})
	if err != nil {
		return err
	}
	defer node.Exit()
	h := &benchmarks.Harness{
		NSQDTCPAddr: node.TCPAddr, NSQDHTTPAddr: node.HTTPAddr, TempDir: tmp,
		DeleteTopic:   func(t string) { _ = node.NSQD.DeleteExistingTopic(t) },
		Progress:      logf,
		ProgressEvery: o.progress,
	}
	logf("nsqd at %s (mem-queue-size %d); results to %s", node.TCPAddr, o.nsqdMemQueue, o.out)

	deferdBin, deferdErr := o.deferdBin, error(nil)
	if deferdBin == "" && strings.Contains(o.designs, "deferd") {
		logf("building ./cmd/deferd")
		deferdBin, deferdErr = benchmarks.BuildDeferd(o.repo, tmp)
		if deferdErr != nil {
			logf("deferd: %v", deferdErr)
		}
	}
	newDesign := func(name string, aof bool) (benchmarks.Design, error) {
		switch name {
		case "channel":
			return benchmarks.NewChannel(benchmarks.ChannelOptions{Capacity: o.channelCap, Workers: o.channelWorks}), nil
		case "zset-poll":
			return benchmarks.NewZSet(benchmarks.ZSetOptions{Shards: o.zsetShards, Batch: o.zsetBatch, Interval: o.zsetInterval, Pollers: o.zsetPollers, AppendOnly: aof}), nil
		case "zset-lua":
			return benchmarks.NewZSet(benchmarks.ZSetOptions{Lua: true, Shards: o.luaShards, Batch: o.luaBatch, Interval: o.zsetInterval, Pollers: o.zsetPollers, AppendOnly: aof}), nil
		case "nsqd-defer":
			return benchmarks.NewNSQDefer(), nil
		case "deferd":
			if deferdErr != nil {
				return nil, deferdErr
			}
			return benchmarks.NewDeferd(deferdBin, strings.Fields(o.deferdArgs)...), nil
		case "wheel":
			if d, ok := benchmarks.ExtraDesign(name); ok {
				return d, nil
			}
			return nil, fmt.Errorf("wheel design not registered")
		}
		return nil, fmt.Errorf("unknown design %q", name)
	}

	var results []benchmarks.Result
	var take, takeDeliver time.Duration
	started := time.Now()
	for _, sc := range split(o.scenarios) {
		loads, err := o.loads(sc)
		if err != nil {
			return err
		}
		if sc == benchmarks.ScenarioBurst {
			take, takeDeliver, err = h.NSQDTake(o.burst, o.size, o.burstBuffered)
			if err != nil {
				return fmt.Errorf("nsqd take: %w", err)
			}
			logf("nsqd alone takes %d messages in %s, takes and delivers them in %s", o.burst, take, takeDeliver)
		}
		for _, name := range split(o.designs) {
			for _, l := range loads {
				d, err := newDesign(name, sc == benchmarks.ScenarioCrash)
				if err != nil {
					if _, ok := err.(*benchmarks.ErrNotRunnable); !ok {
						return err
					}
					results = append(results, benchmarks.Result{Design: name, Scenario: sc, Skipped: err.Error()})
					break
				}
				if _, ok := d.(benchmarks.Crasher); l.CrashAfter > 0 && !ok {
					why := "this design cannot be crashed"
					if name == "nsqd-defer" {
						why = "not crash-tested: nsqd runs inside the harness; nsqd keeps deferred messages in memory and writes them to disk only on a clean exit, so a SIGKILL loses every pending one"
					}
					results = append(results, benchmarks.Result{Design: name, Scenario: sc, Skipped: why})
					break
				}
				logf("%s / %s: offering %d at %s", name, sc, l.Count, rateString(l.Rate))
				r, err := h.Run(d, l)
				if err != nil {
					return err
				}
				if r.Skipped != "" {
					logf("  skipped: %s", r.Skipped)
					results = append(results, r)
					break
				}
				logf("  delivered %d/%d, lost %d, dup %d, early %d, p50 %s p99 %s max %s, %.0f msg/s",
					r.Delivered, r.Accepted, r.Lost, r.Dup, r.Early, r.P50, r.P99, r.Max, r.Sustained)
				results = append(results, r)
			}
		}
	}
	elapsed := time.Since(started)

	rep := report{
		Header: fmt.Sprintf("Run %s on %s/%s, %d CPUs, %s, in %s.\n\nCommand: `cd benchmarks && go run ./cmd/compare %s`\n\n",
			time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(),
			runtime.Version(), elapsed.Round(time.Second), strings.Join(os.Args[1:], " ")),
		NSQDTake: take,
		Results:  benchmarks.Downsample(results, 400),
	}
	if take > 0 {
		rep.Header += fmt.Sprintf("nsqd alone: takes %d × %d B messages (MPUB, batches of 500) in %s; takes and delivers them to the consumer in %s. Burst target: all delivered within %s of the due time.\n\n",
			o.burst, o.size, take.Round(time.Millisecond), takeDeliver.Round(time.Millisecond), (take + time.Second).Round(time.Millisecond))
	}
	js, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "comparison.json"), js, 0o644); err != nil {
		return err
	}
	return rep.write(o.out, results)
}

// report is what comparison.json keeps of a run: enough to redraw.
type report struct {
	Header   string
	NSQDTake time.Duration
	Results  []benchmarks.Result
}

func (rep report) write(out string, results []benchmarks.Result) error {
	mdPath := filepath.Join(out, "comparison.md")
	f, err := os.Create(mdPath)
	if err != nil {
		return err
	}
	io.WriteString(f, rep.Header)
	if err := benchmarks.WriteTable(f, results); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	png := filepath.Join(out, "comparison.png")
	if err := os.Remove(png); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err // a previous run's chart would pass for this one's
	}
	switch err := benchmarks.Chart(png, results, rep.NSQDTake); {
	case errors.Is(err, benchmarks.ErrNoChartData):
		logf("wrote %s; no chart: %v", mdPath, err)
		return nil
	case err != nil:
		return err
	}
	logf("wrote %s and %s", mdPath, png)
	return nil
}

func redraw(jsonPath, out string) error {
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return err
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("%s: %w", jsonPath, err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	return rep.write(out, rep.Results)
}

// loads returns the steps of one scenario.
func (o options) loads(sc string) ([]benchmarks.Load, error) {
	switch sc {
	case benchmarks.ScenarioFixed:
		var ls []benchmarks.Load
		for _, s := range split(o.rates) {
			rate, err := strconv.ParseFloat(s, 64)
			if err != nil || rate <= 0 {
				return nil, fmt.Errorf("--rates: bad rate %q", s)
			}
			ls = append(ls, benchmarks.Load{Scenario: sc, Rate: rate, Count: int(rate * o.duration.Seconds()), Size: o.size,
				MinDelay: o.fixedDelay, MaxDelay: o.fixedDelay, Grace: 15 * time.Second, BufferedConsumer: o.bufferedConsumer})
		}
		return ls, nil
	case benchmarks.ScenarioMixed:
		return []benchmarks.Load{{Scenario: sc, Rate: o.mixedRate, Count: int(o.mixedRate * o.mixedDuration.Seconds()), Size: o.size,
			MinDelay: o.mixedMin, MaxDelay: o.mixedMax, Grace: o.mixedGrace}}, nil
	case benchmarks.ScenarioBurst:
		return []benchmarks.Load{{Scenario: sc, Count: o.burst, Size: o.size, DueAfter: o.burstLead, Grace: 30 * time.Second, BufferedConsumer: o.burstBuffered}}, nil
	case benchmarks.ScenarioCapacity:
		return []benchmarks.Load{{Scenario: sc, Count: o.capacity, Size: o.size, MinDelay: o.capacityDelay, MaxDelay: o.capacityDelay, Hold: true}}, nil
	case benchmarks.ScenarioCrash:
		return []benchmarks.Load{{Scenario: sc, Rate: o.crashRate, Count: int(o.crashRate * o.crashDuration.Seconds()), Size: o.size,
			MinDelay: o.crashMin, MaxDelay: o.crashMax, CrashAfter: o.crashAt, Grace: 15 * time.Second}}, nil
	}
	return nil, fmt.Errorf("--scenarios: unknown scenario %q", sc)
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func rateString(r float64) string {
	if r <= 0 {
		return "max rate"
	}
	return fmt.Sprintf("%.0f msg/s", r)
}
