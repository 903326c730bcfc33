package main

import (
	"flag"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/deferd/deferd"
)

// usage is each flag's help text, by the flag tag of its deferd.Options
// field. Defaults come from deferd.NewOptions, never from here.
var usage = map[string]string{
	"data-path":                    "directory for the journal (and the embedded nsqd's data)",
	"nsqd-tcp-address":             "nsqd TCP address to publish to (may be given multiple times); when given, no embedded nsqd is started",
	"lookupd-http-address":         "nsqlookupd HTTP address (may be given multiple times): publish to every nsqd it lists as well (never registers deferd); when given, no embedded nsqd is started",
	"lookupd-poll-interval":        "how often to ask --lookupd-http-address for its nsqds",
	"cluster-peers":                "HTTP addresses of every deferd instance of a cluster, the same ordered list on each (comma-separated, or the flag repeated): any instance takes any request, and a request naming an id goes to the id's owner, shard fnv1a32(id) % 256 -> peers[shard % N]",
	"cluster-self":                 "this instance's entry in --cluster-peers, spelled the same (default: --http-address)",
	"cluster-forward-timeout":      "bound on one request forwarded to an id's owner (and on one poll of a peer's /stats); past it: 503 OWNER_UNAVAILABLE",
	"cluster-forward-conns":        "most connections (keep-alive) to one peer at once for forwarded requests",
	"cluster-poll-interval":        "how often the peers' /stats are polled (for /stats' cluster section) and a hand-off pass of ids owned elsewhere runs",
	"embedded-nsqd-tcp-address":    "TCP address of the embedded nsqd",
	"embedded-nsqd-http-address":   "HTTP address of the embedded nsqd",
	"embedded-nsqd-mem-queue-size": "the embedded nsqd's --mem-queue-size (messages kept in memory per topic and channel; 0: all on its disk queue, none lost with the process)",
	"embedded-nsqd-log-level":      "the embedded nsqd's log level (debug, info, warn, error, fatal)",
	"http-address":                 "<addr>:<port> to listen on for HTTP clients (binding beyond loopback is your explicit choice)",
	"tcp-address":                  "<addr>:<port> to listen on for nsqd TCP protocol producers (PUB, MPUB, DPUB); empty: none",
	"ui":                           "serve the status page at GET / of --http-address (false: GET / is 404, as in nsqd); its cancel and reschedule are refused to pages of other origins",
	"max-msg-size":                 "maximum size of a single message in bytes (as nsqd's)",
	"max-body-size":                "maximum size of a single request body in bytes (as nsqd's)",
	"max-defer":                    "maximum delay of a message (defer= or at=)",
	"tick":                         "timing wheel resolution: messages go out at most about one tick after their due time",
	"pool-size":                    "ants workers publishing due messages",
	"task-size":                    "largest number of due messages one publish task takes",
	"batch-size":                   "messages per MPUB to nsqd",
	"conns-per-nsqd":               "TCP connections (go-nsq producers) per nsqd",
	"max-pending":                  "most messages held; past it publishes get 503 OVER_CAPACITY; -1: derived at start from memory (half of MemAvailable / 128 B, within 1M-1G)",
	"max-pending-bytes":            "most journal bytes of pending messages; past it publishes get 503 OVER_CAPACITY; -1: derived at start from disk (half of the free space under --data-path plus the journal, within 1 GiB-1 PiB)",
	"max-topics":                   "most distinct topics held (with messages pending, and the embedded nsqd's topics, about 0.82 MB of heap each at the default --embedded-nsqd-mem-queue-size: 100 are ~82 MB); a publish to a new topic past it gets 503 TOO_MANY_TOPICS; -1: 100 with the embedded nsqd, 10000 without",
	"retry-backoff":                "wait before a failed publish is tried again (messages are never dropped)",
	"park-backoff":                 "wait before a message nsqd refused, or whose journal record failed to read, is tried again",
	"fsync":                        "when the journal reaches the disk: always (before each reply), interval (every --fsync-interval), never (OS decides); every reply waits for the write to the OS",
	"fsync-interval":               "fsync period with --fsync=interval",
	"segment-size":                 "journal segment size in bytes",
	"compact-interval":             "how often to look for journal segments to compact (0 disables)",
	"direct-publish":               "send messages already due (no delay, no id) to nsqd before replying, skipping the journal; the 200 then means nsqd acknowledged them. What nsqd does not take at once is journaled as usual",
	"id-retention":                 "how long a client id stays known after its message was published: a /pub with it answers 200 and schedules nothing, /message reports it published (kept across restarts; 0: forgotten once published)",
	"shutdown-grace":               "on SIGTERM, how long in-flight requests, then running publishes, may take to finish",
	"http-max-conns":               "most open HTTP connections; one beyond it gets a plain-text 503 and is closed",
	"http-header-timeout":          "time for an HTTP request's head (from the connection's open, or a keep-alive request's first byte); past it the connection is closed without an answer",
	"http-body-timeout":            "time for an HTTP request's body, from the end of its head; past it /pub and /mpub answer 500 INTERNAL_ERROR (as nsqd does to a failed body read), counted in deferd_ingest_client_errors_total",
	"http-idle-timeout":            "how long a keep-alive HTTP connection may wait for its next request",
	"max-inflight-body-bytes":      "most bytes of HTTP request bodies being received at once, over all connections; a /pub or /mpub past it gets 503 BODY_BUDGET_EXCEEDED before its body is read (bodies over 64 KiB may use only 7/8 of it)",
}

// stringList is a repeatable string flag bound to a []string.
type stringList struct{ v *[]string }

func (s stringList) String() string {
	if s.v == nil {
		return ""
	}
	return strings.Join(*s.v, ",")
}
func (s stringList) Set(v string) error { *s.v = append(*s.v, v); return nil }

// bindOptions defines on fs one flag per `flag`-tagged field of o, bound
// to that field, with the field's current value as its default. It panics
// on a tagged field of a kind it does not know or without usage text:
// TestFlagsCoverOptions catches both.
func bindOptions(fs *flag.FlagSet, o *deferd.Options) {
	v := reflect.ValueOf(o).Elem()
	t := v.Type()
	for i := range t.NumField() {
		name := t.Field(i).Tag.Get("flag")
		if name == "" {
			continue
		}
		help, ok := usage[name]
		if !ok {
			panic(fmt.Sprintf("BUG: flag --%s has no usage text", name))
		}
		switch p := v.Field(i).Addr().Interface().(type) {
		case *string:
			fs.StringVar(p, name, *p, help)
		case *bool:
			fs.BoolVar(p, name, *p, help)
		case *int:
			fs.IntVar(p, name, *p, help)
		case *int64:
			fs.Int64Var(p, name, *p, help)
		case *time.Duration:
			fs.DurationVar(p, name, *p, help)
		case *[]string:
			fs.Var(stringList{p}, name, help)
		default:
			panic(fmt.Sprintf("BUG: flag --%s: field type %T", name, p))
		}
	}
}
