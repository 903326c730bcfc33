// Command perfstages splits a perf profile of the deferd process into the
// stages of a message's path and prints each stage's share of the samples
// and, given the messages the profiled window moved, its CPU per message.
//
//	perf record -F 499 -g -p $(pgrep -f 'deferd-bin ') -o deferd.perf -- sleep 25
//	perf script -i deferd.perf -F comm,tid,period,ip,sym | go run ./cmd/perfstages -msgs 2500000
//
// A sample goes to the first stage (in the order below) one of whose
// patterns appears in a frame of its stack, so journal work done inside an
// HTTP handler counts as journal, not ingest. Scheduler and sysmon samples
// are the cost of parking and waking threads, driven by all stages.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

type stage struct {
	name     string
	patterns []string
}

var stages = []stage{
	{"GC (mark workers, assists, sweep)", []string{"runtime.gcBgMarkWorker", "runtime.gcAssistAlloc", "runtime.bgsweep", "runtime.bgscavenge", "runtime.gcStart", "runtime.markroot"}},
	{"egress (MPUB encode, go-nsq, socket write, nsqd's answer)", []string{"deferd/egress.", "nsqio/go-nsq"}},
	{"journal: group write + fsync (flusher, syncer)", []string{"journal.(*Journal).run", "journal.(*Journal).syncLoop", "journal.(*Journal).flush"}},
	{"read-back for delivery (ReadBatch: pread, CRC, decode)", []string{"deferd.(*Scheduler).readTask"}},
	{"journal: Append (encode, CRC, wait for the group)", []string{"journal.(*Journal).Append"}},
	{"wheel (Add, tick, cascade)", []string{"deferd/wheel."}},
	{"scheduler: index, dispatch, marks, lateness metrics", []string{"deferd.(*Scheduler)", "deferd.(*index)"}},
	{"pool (ants)", []string{"deferd/pool.", "panjf2000/ants"}},
	{"HTTP ingest (fasthttp, body read, parse, handlers)", []string{"valyala/fasthttp", "deferd/ingest."}},
	{"runtime: sysmon", []string{"runtime.sysmon"}},
	{"runtime: scheduler (park, wake, steal, netpoll)", []string{"runtime.schedule", "runtime.park_m", "runtime.findRunnable", "runtime.mcall", "runtime.netpoll", "runtime.goexit0"}},
}

func classify(frames []string) int {
	for i, st := range stages {
		for _, f := range frames {
			for _, p := range st.patterns {
				if strings.Contains(f, p) {
					return i
				}
			}
		}
	}
	return len(stages) // other
}

func main() {
	msgs := flag.Float64("msgs", 0, "messages (in and out) the profiled window moved; 0: shares only")
	flag.Parse()
	counts := make([]float64, len(stages)+1)
	var total, ns float64
	var frames []string
	var period float64
	end := func() {
		if period > 0 {
			counts[classify(frames)] += period
			total += period
		}
		frames, period = frames[:0], 0
	}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			end()
		case line[0] != '\t' && line[0] != ' ': // "comm tid period"
			end()
			f := strings.Fields(line)
			period, _ = strconv.ParseFloat(f[len(f)-1], 64)
		default: // "\taddr symbol"
			if f := strings.Fields(line); len(f) > 1 {
				frames = append(frames, f[1])
			}
		}
	}
	end()
	ns = total // cpu-clock periods are nanoseconds
	fmt.Printf("| stage | share of samples | µs per message |\n| --- | --: | --: |\n")
	for i, c := range counts {
		name := "other"
		if i < len(stages) {
			name = stages[i].name
		}
		us := "-"
		if *msgs > 0 {
			us = fmt.Sprintf("%.2f", c/1e3 / *msgs)
		}
		fmt.Printf("| %s | %.1f%% | %s |\n", name, 100*c/total, us)
	}
	if *msgs > 0 {
		fmt.Printf("| all | %.1f CPU-s sampled | %.2f |\n", ns/1e9, ns/1e3 / *msgs)
	}
}
