// Command soak runs deferd for a long time under a steady load and shows
// whether it holds up: 100k msg/s of 500 B with a 120 s delay for 30
// minutes by default (the reference load), through the deferd binary (its
// journal on) into nsqd running as a process of its own, out to a
// consumer. Every -sample it prints a progress line; at the end it writes
// <out>/<name>.md (totals, steady state, one row per minute), <name>.png
// (disk use of the data path, deferd's RSS and Go heap, lateness per
// minute, throughput, pending, CPU) and <name>.json (the data, for
// -replot).
//
//	cd benchmarks && go run ./cmd/soak                                  # the reference load, 30 min
//	cd benchmarks && go run ./cmd/soak -duration 3m -rate 20000 -delay 30s -name soak-short   # a check
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/deferd/deferd/benchmarks"
)

func main() {
	var c benchmarks.SoakConfig
	flag.Float64Var(&c.Rate, "rate", 100000, "offered msg/s")
	flag.DurationVar(&c.Duration, "duration", 30*time.Minute, "how long the load is offered")
	flag.DurationVar(&c.Delay, "delay", 120*time.Second, "every message's delay")
	flag.IntVar(&c.Size, "size", 500, "message body bytes")
	flag.DurationVar(&c.Sample, "sample", 10*time.Second, "sampling and progress interval")
	flag.BoolVar(&c.BufferedConsumer, "buffered-consumer", true, "let nsqd buffer its writes to the consumer (16 KiB or 250 ms), as the reference load's -buffered-consumer")
	flag.Int64Var(&c.NSQDMemQueue, "nsqd-mem-queue-size", 1_000_000, "nsqd's --mem-queue-size")
	out := flag.String("out", "results", "directory for <name>.md, <name>.png and <name>.json")
	name := flag.String("name", "soak", "base name of the output files")
	repo := flag.String("repo", "..", "deferd's module root, to build ./cmd/deferd and nsqd from")
	deferdBin := flag.String("deferd-bin", "", "use this deferd binary instead of building ./cmd/deferd from -repo")
	nsqdBin := flag.String("nsqd-bin", "", "use this nsqd binary instead of building `go tool nsqd` from -repo")
	deferdArgs := flag.String("deferd-args", "", "extra flags for deferd, space-separated")
	commit := flag.String("commit", "", "the commit measured, for the report (default: git rev-parse HEAD of -repo)")
	replot := flag.String("replot", "", "write the table and chart again from this <name>.json instead of running")
	flag.Parse()
	if *replot != "" {
		b, err := os.ReadFile(*replot)
		if err == nil {
			var rep benchmarks.SoakReport
			if err = json.Unmarshal(b, &rep); err == nil {
				err = write(&rep, *out, *name, false)
			}
		}
		if err != nil {
			fatal(err)
		}
		return
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		benchmarks.KillChildren()
		fmt.Fprintln(os.Stderr, "soak: interrupted; killed deferd and nsqd")
		os.Exit(130)
	}()
	c.Logf = logf
	c.DeferdArgs = strings.Fields(*deferdArgs)
	tmp, err := os.MkdirTemp("", "deferd-soak-*")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(tmp)
	c.TempDir = tmp
	if *commit == "" {
		if b, err := exec.Command("git", "-C", *repo, "rev-parse", "HEAD").Output(); err == nil {
			*commit = strings.TrimSpace(string(b)) + " (HEAD of -repo; its work tree may differ)"
		}
	}
	if c.DeferdBin = *deferdBin; c.DeferdBin == "" {
		logf("building ./cmd/deferd from %s", *repo)
		if c.DeferdBin, err = benchmarks.BuildDeferd(*repo, tmp); err != nil {
			fatal(err)
		}
	}
	if c.NSQDBin = *nsqdBin; c.NSQDBin == "" {
		logf("building nsqd (go tool nsqd) from %s", *repo)
		if c.NSQDBin, err = benchmarks.BuildNSQD(*repo, tmp); err != nil {
			fatal(err)
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fatal(err)
	}
	started := time.Now().UTC()
	logf("soak: %.0f msg/s, %s delay, %d B, for %s; deferd %s, nsqd %s", c.Rate, c.Delay, c.Size, c.Duration, c.DeferdBin, c.NSQDBin)
	rep, err := benchmarks.RunSoak(c)
	if err != nil {
		benchmarks.KillChildren()
		fatal(err)
	}
	rep.Header = fmt.Sprintf("Run %s - %s UTC on %s/%s, %d CPUs, %s. Commit measured: %s.\n\nCommand: `cd benchmarks && go run ./cmd/soak %s`\n\n"+
		"deferd (its journal on, fsync %s) publishes to nsqd running as its own process (%s, --mem-queue-size %d); the soak process offers the load over HTTP (/mpub binary, at=) and consumes with one connection (nsqd buffering its writes: %v). Disk use is the blocks allocated under deferd's --data-path; RSS from /proc; Go heap is go_memstats_heap_inuse_bytes of deferd's /metrics. Lateness is receive time at the consumer minus due time (bucket upper bounds, ~1.6%% wide).\n\n",
		started.Format("2006-01-02 15:04"), time.Now().UTC().Format("15:04"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), *commit,
		strings.Join(os.Args[1:], " "), fsyncOf(c.DeferdArgs), filepath.Base(c.NSQDBin), c.NSQDMemQueue, c.BufferedConsumer)
	if err := write(rep, *out, *name, true); err != nil {
		fatal(err)
	}
}

func fsyncOf(args []string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--fsync="); ok {
			return v
		}
		if a == "--fsync" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return "interval, the default"
}

func write(rep *benchmarks.SoakReport, out, name string, saveJSON bool) error {
	md := filepath.Join(out, name+".md")
	f, err := os.Create(md)
	if err != nil {
		return err
	}
	if err := benchmarks.WriteSoakTable(f, rep); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	png := filepath.Join(out, name+".png")
	if err := os.Remove(png); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := benchmarks.SoakChart(png, rep); err != nil {
		return err
	}
	logf("wrote %s and %s", md, png)
	if saveJSON {
		js, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(out, name+".json"), js, 0o644)
	}
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "soak:", err)
	os.Exit(1)
}
