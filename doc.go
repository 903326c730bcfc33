// Package deferd is a durable delayed-message scheduler: embed it in a Go
// service, or run it as the cmd/deferd daemon in front of NSQ.
//
// A Scheduler journals each message, keeps a 16-byte reference to it in a
// hierarchical timing wheel, and when it is due hands it to a Sink:
// deferd's default sink publishes MPUB batches to nsqd (package egress);
// an embedder may pass its own (Options.Sink, a SinkFunc), such as the
// client of the MQ whose delay queue it backs up. A message reaches the
// sink at, never before, its due time, and at least once: it leaves the
// journal only after the sink took it.
//
//	s, err := deferd.New(opts)         // journal replayed into the wheel
//	err = s.Publish(deferd.Pub{Topic: "t", Bodies: bodies, Delay: time.Minute})
//	err = s.Cancel("renew-42")
//	err = s.Close(10 * time.Second)    // pending messages stay in the journal
//
// The life of a message, file by file:
//
//	publish.go  Publish → checkPub → publish:
//	            due now, no id → directQ (direct.go) → Sink, before the reply;
//	            else journalAndSchedule: journal.Append (group commit; the
//	            call returns after it) → index.add (index.go: wheel + ids)
//	deliver.go  wheel tick → dispatch → one pool task per due bucket →
//	            journal.ReadBatch → Sink.Publish per topic → markPublished
//	            (journal "published" mark); not taken: reschedule
//	cancel.go   Cancel → index.remove → journal "cancelled" mark
//	compact.go  moves pending messages out of old segments
//	recover.go  New replays the journal into the index
//
// The parts around it are turned on by the embedder: ListenHTTP serves
// the nsqd-compatible HTTP API (package ingest); Options.EmbeddedNSQD
// runs a real nsqd in the process; WritePrometheus writes the metrics.
// cmd/deferd is flags, signals and that wiring.
//
// This package owns the pending set (index) and the life of a message;
// it imports the parts (journal, wheel, pool, egress, ingest, and the
// internal nsqdnode and errs) and none of them imports it.
package deferd
