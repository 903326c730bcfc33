// Package egress publishes due messages to nsqd in MPUB batches over several
// connections per nsqd, with retry and failover.
//
// A Publisher holds ConnsPerAddr connections per nsqd, each made with
// go-nsq's Conn (dial, IDENTIFY, heartbeats, reading nsqd's answers) but
// not its Producer: egress encodes each MPUB into a buffer the connection
// reuses (go-nsq's MultiPublish builds a new command of the batch's size
// per call) and hands nsqd's answer from go-nsq's read loop to the waiting
// sender directly. MPUBs are pipelined on a connection, answered in order.
// Publish splits its bodies into batches within MaxBatchMsgs and
// MaxBatchBytes, sends them one after the other on the least-busy connection
// of a healthy nsqd, and counts a body as acknowledged only once nsqd
// answered OK for its batch: delivery is at-least-once (a batch that timed
// out or whose answer was lost may be queued twice).
//
// The nsqds are Options.Addrs (static) and, with Options.LookupdHTTPAddrs,
// those nsqlookupd lists (discovered). New asks every nsqlookupd for GET
// /nodes once (up to Timeout), and a poll loop, which Stop ends, asks again
// every LookupdPollInterval. /nodes lists every nsqd registered with that
// nsqlookupd, whether or not it has topics yet; egress publishes to each at
// its broadcast_address:tcp_port (so the nsqds must broadcast an address
// this process can reach). An address also in Addrs is that static nsqd.
// egress only reads nsqlookupd: it never registers itself.
//
//   - An nsqd that appears gets ConnsPerAddr connections (each dialled on
//     its first use) and takes batches from the next pick on.
//   - An nsqd that disappears (no longer listed, and every nsqlookupd
//     answered) is drained: it leaves the set Publish picks from at once,
//     so no new batch goes to it; a batch already in flight there finishes
//     there, and its outcome (acknowledged, or failed and retried on
//     another nsqd or returned to the caller, who reschedules it) is that
//     of any other batch. Once none is in flight its connections are closed
//     and its metrics removed. A Publish that picked it just before it
//     left picks again, without counting a try. Nothing it did not
//     acknowledge is reported as acknowledged.
//   - Static nsqds are never removed by discovery; one that is down is
//     handled by failover as before.
//   - An nsqlookupd that does not answer (error, non-200, bad JSON, no
//     answer within Timeout) changes nothing: its failure is logged once
//     (and its recovery), the others' answers can only add nsqds, and with
//     none answering the set stays as it was.
//   - An nsqd listed again while it is still draining is added back by
//     the first poll after the drain ends, with new connections.
//   - With no nsqd known (only LookupdHTTPAddrs, none listed yet) Publish
//     and TryPublish return ErrNoNSQD at once, as TryPublish does with
//     every nsqd down: the caller retries later.
//
// Failures are classified:
//
//   - nsqd or connection trouble (refused dial, closed connection, no answer
//     within Timeout): the nsqd is marked down for a backoff that doubles per
//     consecutive failure (Backoff..MaxBackoff, jittered) and the batch is
//     retried at once on another nsqd, or after a backoff if none is left, up
//     to Attempts tries; then Publish returns the error and the caller
//     reschedules the rest. When an nsqd's backoff expires one caller probes
//     it; the others keep skipping it until the probe succeeds.
//   - E_MPUB_FAILED (topic being deleted, nsqd exiting): retried without
//     marking the nsqd down.
//   - nsqd refusing the content (E_BAD_BODY, E_BAD_MESSAGE, because its
//     limits are smaller than the Publisher's): the batch is halved until the
//     offending body is alone, which is then permanent (IsPermanent).
//   - bodies egress can tell are unsendable (empty, over MaxMsgSize) and
//     invalid topic names: permanent, never sent.
//
// A connection is dialled once and never redialled: once it failed,
// closed (also while idle: nsqd restarted) or never came up, the next
// batch for its slot dials a new one. Every failed try replaces the
// connection it used (nsqd closes it after any MPUB error; a timed-out
// MPUB may still be answered on it), as do the idle connections of an
// nsqd that is marked down.
//
// Bounds: a Publish try waits at most Timeout, for a dial and nsqd's
// answer together; a dial it stops waiting for goes on in the background,
// within go-nsq's DialTimeout and, for an nsqd that accepts but never
// answers IDENTIFY, its 10s read timeout. Stop makes waiting Publish calls
// return ErrStopped at once, then waits for such a dial. A drain lasts as long as the batches in flight to its
// nsqd (each within those bounds); Stop waits for drains and for the poll
// loop, whose query in progress it cancels.
//
// Metrics (Publisher.Metrics, a Set of the Publisher's own, which the
// scheduler writes in its WritePrometheus):
// deferd_egress_published_total, _batches_total, _errors_total,
// _batch_duration_seconds, _inflight_batches and _up, each with
// {nsqd="host:port"} (a drained nsqd's are removed; they start from 0
// if it comes back); deferd_egress_retries_total,
// deferd_egress_permanent_errors_total and deferd_egress_gave_up_total.
//
// egress owns the connections to nsqd and the batching, retry and failover
// of one publish; what to do with what nsqd did not take (reschedule,
// park) is its caller's. It imports go-nsq and metrics, nothing of
// deferd's: the root package wraps it as deferd's default Sink.
package egress
