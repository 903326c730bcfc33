// Package ingest is deferd's front door: an nsqd-compatible HTTP API (/pub
// and /mpub, plus delays, absolute due times, ids and cancel, on fasthttp)
// and nsqd's V2 TCP protocol for producers (TCPServer).
//
// It owns parsing and validation by nsqd's rules, the connections and their
// limits, and the mapping of the scheduler's errors (internal/errs) to
// nsqd's answers. What a request means is its Backend's: ingest imports
// nothing of deferd's but internal/errs and internal/intern, and the root
// package implements Backend.
//
// # Compatibility with nsqd 1.3.0
//
// For every request nsqd's HTTP API accepts on /pub, /mpub and /ping, the
// Server answers with the same status code, body and content type, in the
// same validation order: "OK" on success, and errors as
// {"message":"CODE"} with Content-Type "application/json; charset=utf-8"
// and nsqd's X-NSQ-Content-Type header. /pub checks the body (MSG_TOO_BIG,
// MSG_EMPTY) before the query (INVALID_REQUEST, MISSING_ARG_TOPIC,
// INVALID_TOPIC, INVALID_DEFER); /mpub checks Content-Length (BODY_TOO_BIG)
// and the query before the body. Text /mpub drops empty lines; binary /mpub
// (binary=true, or any value other than false/0/true/1) is nsqd's framing:
// a 4-byte big-endian count, then per message a 4-byte big-endian size and
// the body, with errors 413 BAD_BODY / BAD_MESSAGE. A wrong method gets 405
// METHOD_NOT_ALLOWED with an Allow header, OPTIONS 200 with Allow, an
// unknown path 404 NOT_FOUND, and, as nsqd's router does, a path that only a
// trailing slash, cleaning or letter case keeps from a route is redirected
// to it (301 for GET, 307 for POST, query kept). HTTP/1.0 requests get
// HTTP/1.0 responses.
//
// # deferd extensions
//
//   - defer=MS on /pub and /mpub: publish MS milliseconds from now, 0 to
//     Options.MaxDefer (nsqd: /pub only, at most 1h). The due time is
//     ceil(now in ms) + MS, so a message is never published early.
//   - at=UNIX_MS on /pub and /mpub: publish at that absolute time; a time in
//     the past means at once. Both defer and at, a malformed, negative or
//     out-of-range value (beyond now + MaxDefer) are 400 INVALID_DEFER. On
//     /mpub these are checked after the topic and before the body.
//   - id=ID on /pub: a client-chosen id that POST /cancel?id=ID removes while
//     the message is pending. An ID is 1 to 128 bytes (after URL decoding),
//     each a printable ASCII character from '!' to '~' (no space, no control
//     or non-ASCII bytes); anything else is 400 INVALID_ID. id on /mpub is
//     400 INVALID_ID too, since one id cannot name many messages.
//   - POST /cancel?id=ID: 200 OK if the backend removed a pending message
//     (deferd's engine answers once the cancel is journaled),
//     404 NOT_FOUND if there is none, 409 IN_FLIGHT if it is being handed
//     to nsqd right now, 400 MISSING_ARG_ID without id.
//   - GET /info and GET /stats: the backend's Info and Stats as JSON;
//     GET /metrics: Prometheus text of the VictoriaMetrics default set.
//   - Backend errors: an *Error becomes its status and {"message":Text}
//     (503 OVER_CAPACITY, 503 JOURNAL_UNAVAILABLE, 503 EXITING, ...), any
//     other error 500 INTERNAL_ERROR.
//
// # Operator endpoints (OperatorBackend; operator.go)
//
// A message is named by id=ID (its client id) or key=K, deferd's key of
// every accepted message, "SEG-ORD" (the journal key of its first record;
// the same across restarts, compaction and reschedules). Exactly one of
// them: neither or both is 400 MISSING_ARG_ID, a bad id 400 INVALID_ID, a
// bad key 400 INVALID_KEY. /pub and /mpub still answer a plain OK.
//
//   - GET /message?id=ID|key=K[&body=true]: 200
//     {"id":ID,"key":K,"topic":T,"state":S,"due_ms":N,"accepted_ms":N,"size":N,"attempts":N}
//     with S pending, in_flight or published (published only while the id
//     is retained, --id-retention); "id" is "" for a message without one;
//     size is the body's bytes; accepted_ms 0 means unknown (journaled by
//     an older deferd); attempts counts hand-overs to nsqd that failed (plus
//     the one that succeeded, once published). body=true adds
//     "body":BASE64 (at most 64 KiB) and "truncated":BOOL (body=false or
//     absent: neither; a value that is not a bool is 400 INVALID_REQUEST).
//     404 NOT_FOUND if no such message is pending, in flight or retained.
//   - GET /pending?[topic=T][&limit=N][&after=CURSOR]: 200
//     {"messages":[{"key":K,"id":ID,"topic":T,"due_ms":N,"size":N},...],"cursor":C}
//     the next N (default 100, 1 to 1000, else 400 INVALID_LIMIT) pending
//     messages in the order they go out (due order; a message waiting out
//     a retry at its retry time); "id" only when set; "cursor" is "" when
//     the listing is complete, else pass it as after= for the next page
//     (400 INVALID_CURSOR if malformed; valid while the process runs). A
//     page may hold fewer than N with a cursor when, with topic=, 100,000
//     messages of other topics were passed. A bad topic is 400
//     INVALID_TOPIC.
//   - POST /reschedule?id=ID|key=K&defer=MS|at=UNIX_MS: 200 OK once the
//     message's new due time is in the journal (survives kill -9 as a
//     cancel does); never early for the new time; defer=0 (or a past at=)
//     runs it now. defer/at as for /pub (neither, both or out of range:
//     400 INVALID_DEFER); 404 NOT_FOUND if it is not pending; 409
//     IN_FLIGHT if it is being handed to nsqd right now.
//   - POST /cancel?key=K: /cancel by key, with /cancel's answers.
//
// /stats has "due" (and /metrics deferd_overdue_messages,
// deferd_oldest_overdue_seconds, deferd_pending_due_within{within=...},
// deferd_accepted_per_second, deferd_published_per_second and their
// deferd_topic_* versions): overdue, the oldest overdue's age, pending
// by due within 1s, 10s, 1m, 10m, 1h, 1d, later (disjoint ranges), and
// accepted and published per second over the last minute, in all and per
// topic ("topics"); see deferd.DueReport for how each is computed.
//
// # The status page and cross-origin requests
//
// With Options.UI (deferd's --ui, on by default) GET / serves the status
// page, with its script and style at GET /ui/app.js and /ui/style.css
// (package ingest/ui: embedded, nothing fetched from elsewhere, served
// with a Content-Security-Policy of 'self' only, no framing, no caching).
// Without it GET / is 404 NOT_FOUND, as in nsqd. Other paths, and every
// other method on /, answer as before.
//
// The page changes state through the API itself, so the API guards it
// against cross-site request forgery: a page of another site open in an
// operator's browser must not cancel or reschedule through it (the
// browser reaches 127.0.0.1 as the operator does). POST /cancel and POST
// /reschedule (whether or not the UI is on) are refused with 403
// {"message":"CROSS_ORIGIN"}, before anything is read or done, when the
// request is a browser's (it has a Sec-Fetch-Site or an Origin header)
// and any of these holds:
//
//   - Sec-Fetch-Site is other than "same-origin" or "none": "cross-site",
//     and "same-site" too, which is what a page on another port of
//     127.0.0.1 (or of localhost) sends;
//   - Origin is not "scheme://" followed by exactly the Host header
//     ("null" and a port spelled on one side only do not match);
//   - X-Deferd-UI: 1 is missing. The page sends it with each POST; a page
//     of another origin cannot send it without a CORS preflight, and
//     deferd grants none (OPTIONS answers only Allow).
//
// A request with neither Sec-Fetch-Site nor Origin (curl, client
// libraries, producers) is served exactly as before, so are /pub and
// /mpub whatever their headers (nsqd's contract; a page of another site
// can publish to deferd as it can to nsqd), and GETs, whose answers a page
// of another origin cannot read (no CORS headers). Not covered: DNS
// rebinding (a hostile name resolving to 127.0.0.1 makes its page
// same-origin; bind to an address and use a Host only you resolve), and
// browsers from before 2020 that send neither header on a cross-site form
// POST.
//
// # Known differences from nsqd
//
//   - A binary /mpub body sent chunked (no Content-Length) whose messages run
//     past MaxBodySize is 413 BODY_TOO_BIG; nsqd reads binary bodies without
//     a total limit. With a Content-Length both reject it as BODY_TOO_BIG.
//   - An empty /mpub (no non-empty line) is 200 OK without calling the
//     backend; nsqd also answers OK (or 503 EXITING while it shuts down).
//   - nsqd's /ping reports its health; deferd's always says OK while serving.
//   - GET / is the status page with Options.UI (nsqd: 404), and a
//     browser's cross-origin POST /cancel or /reschedule is 403
//     CROSS_ORIGIN (nsqd has neither endpoint).
//   - nsqd's /stats is text unless format=json, and nsqd has more endpoints
//     (/topic/*, /channel/*, /config, /debug/pprof); deferd's /stats is the
//     backend's JSON and the others are 404.
//   - A refused request whose unread body is over 256 KiB is answered with
//     Connection: close and the connection lingers (half-closed, draining,
//     at most 3 s) so the client reads the answer, as Go's net/http does.
//     A body the body budget refused (503 BODY_BUDGET_EXCEEDED) is not
//     drained: the connection is half-closed and closed 1 s after the
//     answer, or when the client closes first (seen on Linux without
//     reading, POLLRDHUP; elsewhere only the 1 s ends it), so a refused
//     sender costs no copying; a client that reads the answer only after
//     sending all of its body may see a reset. Lingering connections
//     (either kind) count against Options.MaxConns: one accepted past it
//     closes a lingering one at once, and a refusal with more than
//     MaxConns open closes at once instead of lingering. Shutdown closes
//     them all and waits for their goroutines.
//     With Expect: 100-continue fasthttp sends 100 Continue before the
//     handler runs, so a body the handler refuses unread (oversized, a bad
//     topic, a wrong method) is sent and drained where nsqd (which never
//     reads it) answers at once; the answer is the same. An Expect other
//     than 100-continue is ignored; nsqd answers it 417.
//   - A body cut off by the client (the connection ends before
//     Content-Length bytes) is 500 INTERNAL_ERROR on /pub and /mpub, as in
//     nsqd, and nothing is published. When under 8 KiB of it arrived,
//     fasthttp finds the cut before routing, so the answer is that 500 on
//     any route, where nsqd answers routes that do not read the body as
//     usual and a Content-Length over the limit with 413.
//   - Request heads over 16 KiB get 431 (nsqd's limit is 1 MiB).
//   - Malformed requests get Go's "400 Bad Request", but fasthttp's parser
//     and Go's do not refuse exactly the same malformed requests.
//   - nsqd multiplies defer by a millisecond without an overflow check, so a
//     huge defer can wrap into range; deferd rejects it.
//   - deferd's own parameters are checked where nsqd ignores them: defer on
//     /mpub (nsqd 1.3.0 publishes an /mpub at once whatever its defer;
//     deferd delays it, and a bad value is 400 INVALID_DEFER), at (400
//     INVALID_DEFER if malformed, or given together with defer), and id (400
//     INVALID_ID if empty, malformed, or on /mpub). A producer that sends
//     these to nsqd today gets them ignored there and honoured here.
//
// # The TCP protocol (TCPServer)
//
// TCPServer speaks nsqd 1.3.0's TCP protocol (V2) to producers, by default
// on 127.0.0.1:4190 (beside the HTTP API's 4180, as nsqd's 4150 sits beside
// its 4151), so nsqd's client libraries publish to it unchanged (go-nsq's
// Producer is tested against it; testdata/nsqjs has a script for nsqjs). The
// same bytes get the same frames and the same close as from nsqd: the "  V2"
// magic (any other: E_BAD_PROTOCOL, closed); command lines split on single
// spaces, a trailing \r dropped; IDENTIFY with nsqd's checks and reply
// (every key, with nsqd's values; "version" is "1.3.0"), answered as often
// as it is sent, heartbeats at its negotiated interval and a read deadline
// of two intervals; AUTH is E_AUTH_DISABLED; PUB, MPUB (atomic: all
// messages read and checked, then one Backend.Publish) and DPUB with nsqd's
// error frames, every one fatal as in nsqd; NOP without an answer; one OK
// per publish, in order. A backend error is E_PUB_FAILED, E_MPUB_FAILED or
// E_DPUB_FAILED with the answer's text ("PUB failed OVER_CAPACITY",
// JOURNAL_UNAVAILABLE, EXITING, INTERNAL_ERROR), and the connection is
// closed, as nsqd closes on a failed put, so a client reconnects. Its
// differences from nsqd:
//
//   - DPUB takes 0 to TCPOptions.MaxDefer ms (nsqd: --max-req-timeout, 1h);
//     a value that overflows is refused (nsqd's wraps, maybe into range).
//   - MPUB <topic> <defer_ms>: deferd's deferred MPUB, checked as DPUB's
//     delay is ("E_INVALID MPUB could not parse timeout x", "... out of
//     range ..."). nsqd ignores words after MPUB's topic and publishes at
//     once: a producer that sends one to nsqd today gets it ignored there
//     and honoured here (go-nsq's MultiPublish sends the topic alone).
//   - MPUB's messages may take at most MaxBodySize bytes (count and sizes
//     included), whatever the declared body size: past it, "E_BAD_BODY
//     MPUB body too big N > MAX". nsqd checks only the declared size and
//     reads the messages without a total limit.
//   - deferd is no consumer endpoint: SUB is "E_INVALID cannot SUB in
//     current state (deferd accepts publishers only)", closed. RDY, FIN,
//     REQ, TOUCH and CLS get nsqd's own answer on a connection that has not
//     subscribed ("E_INVALID cannot RDY in current state"), closed.
//   - TLS, snappy and deflate are never negotiated: IDENTIFY answers
//     tls_v1, snappy and deflate false, where nsqd may upgrade (or refuse
//     snappy with deflate, E_IDENTIFY_FAILED).
//   - Deadlines nsqd does not have: the magic must come within two default
//     heartbeat intervals; with heartbeats off (heartbeat_interval -1) a
//     command, once begun, must arrive within two MaxHeartbeatIntervals; a
//     frame write waits at most one heartbeat interval (MaxHeartbeatInterval
//     with heartbeats off). TCPOptions.MaxConns bounds the connections; one
//     past it is closed at once.
//   - After a fatal error deferd half-closes the connection and drains what
//     the client still sends (at most 1 s), so the error frame is read
//     rather than lost to a reset; nsqd closes at once.
//   - Output buffering is not done: each frame is written at once;
//     output_buffer_size, output_buffer_timeout, msg_timeout and sample_rate
//     are checked and echoed as nsqd does, and otherwise unused.
package ingest
