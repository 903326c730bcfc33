package deferd

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/internal/cluster"
	"github.com/deferd/deferd/journal"
)

// The cluster side of the HTTP API (Options.ClusterPeers; the shard map,
// the fingerprint and the routing of connections are internal/cluster's
// doc). With ClusterPeers set, ListenHTTP's server takes every request:
//
//   - A request without an id (/pub and /mpub without id=, /pending,
//     /ping, /info, /stats, /metrics) and every key= request is handled by
//     the instance it reaches. A key names a message on the instance that
//     took it (keys are per instance: the same key on another instance is
//     another message), so key= requests go to the instance whose /pending
//     or /message listed the key.
//   - A request naming an id (/pub?id=, /cancel?id=, /reschedule?id=,
//     /message?id=) is handled by the id's owner. Another instance
//     forwards it (/pub and /reschedule with the due time it computed, as
//     at=UNIX_MS, so the owner schedules the same instant) and answers
//     with the owner's answer: its status and {"message":CODE} (or 200 OK,
//     or /message's JSON) in deferd's content types. An owner that does
//     not answer within ClusterForwardTimeout (down, refused, no free
//     connection) gets 503 {"message":"OWNER_UNAVAILABLE"}: the request
//     may or may not have been acted on, and a retry is safe (an id
//     deduplicates /pub; at= is absolute; a repeated /cancel then answers
//     404). An owner whose peer list differs answers 503
//     {"message":"PEER_LIST_MISMATCH"}, relayed as is.
//   - The TCP protocol (ListenTCP) carries no ids: always local.
//   - Scheduler's Go methods (Publish, Cancel, ...) are local: the cluster
//     is the HTTP API's.
//
// Every ClusterPollInterval each instance GETs its peers' /stats (bounded
// by ClusterForwardTimeout) for /stats' "cluster" section and to warn, in
// the log, of a peer whose peer list differs (the first poll runs at
// ListenHTTP, so a mismatch is logged at start; requests are refused only
// by the owner, per request).
//
// Hand-off. A peer list change is an operator action: stop the instances,
// start every one with the new list (on its own data path). Each
// instance then looks, at start and every ClusterPollInterval until a
// pass finds none, for pending messages with an id it no longer owns, and
// forwards each to its owner as /pub?topic=T&at=DUE&id=ID with its body;
// after the owner's 200 it cancels its own copy (by key). A message that
// goes out locally meanwhile (due, or in flight at the cancel) is then
// delivered twice (at-least-once); none is lost: a copy is dropped only
// after its owner journaled it. Until the hand-off is done (/stats
// cluster.handoff.done on every instance), a /cancel, /reschedule or
// /message of a moved id may reach the new owner before the message does
// and answer 404, and ids published on their old owner are retained there
// only (IDRetention does not move).

// clusterNode is a Scheduler's cluster side, made by its first ListenHTTP.
type clusterNode struct {
	s  *Scheduler
	m  *cluster.Map
	fw *cluster.Forwarder

	mu      sync.Mutex
	demuxes []*cluster.Demux
	warned  map[string]string // peer -> what was last logged of it

	ownerUnavailable atomic.Uint64
	mismatchGot      atomic.Uint64 // PEER_LIST_MISMATCH answers relayed

	handoffMoved     atomic.Uint64
	handoffFailed    atomic.Uint64
	handoffInFlight  atomic.Uint64 // moved while in flight here: may go out twice
	handoffPasses    atomic.Uint64
	handoffRemaining atomic.Int64
	handoffDone      atomic.Bool
}

// Answers of the cluster.
var (
	errOwnerUnavailable = &ingest.Error{Code: 503, Text: "OWNER_UNAVAILABLE"}
)

// clusterSelf is this instance's address in ClusterPeers.
func (o *Options) clusterSelf() string {
	if o.ClusterSelf != "" {
		return o.ClusterSelf
	}
	return o.HTTPAddress
}

// validateCluster checks the cluster options (ClusterPeers set).
func (o *Options) validateCluster() error {
	if len(o.ClusterPeers) == 0 {
		if o.ClusterSelf != "" {
			return errors.New("--cluster-self (Options.ClusterSelf) needs --cluster-peers (Options.ClusterPeers)")
		}
		return nil
	}
	if _, err := cluster.NewMap(o.ClusterPeers, o.clusterSelf()); err != nil {
		return fmt.Errorf("--cluster-peers/--cluster-self (Options.ClusterPeers, ClusterSelf; self defaults to --http-address): %w", err)
	}
	return nil
}

// clusterOf returns s's clusterNode, making it (and starting its loop) on
// the first call; nil without ClusterPeers.
func (s *Scheduler) clusterOf() (*clusterNode, error) {
	if len(s.opts.ClusterPeers) == 0 {
		return nil, nil
	}
	s.clusterOnce.Do(func() {
		m, err := cluster.NewMap(s.opts.ClusterPeers, s.opts.clusterSelf())
		if err != nil {
			s.clusterErr = err
			return
		}
		fw, err := cluster.NewForwarder(m, cluster.ForwarderOptions{Conns: s.opts.ClusterForwardConns, Timeout: s.opts.ClusterForwardTimeout})
		if err != nil {
			s.clusterErr = err
			return
		}
		c := &clusterNode{s: s, m: m, fw: fw, warned: map[string]string{}}
		s.listenersMu.Lock()
		s.cluster = c
		s.listenersMu.Unlock()
		s.logf("cluster: instance %d of %v (fingerprint %s); shard = fnv1a32(id) %% %d, owner = peers[shard %% %d]",
			m.Self(), m.Peers(), m.Fingerprint(), cluster.Shards, len(m.Peers()))
		go c.loop()
	})
	return s.cluster, s.clusterErr
}

// clusterListen is ListenHTTP's cluster part: without ClusterPeers b and
// ln as they are; with them a Demux on ln (bound here when nil) whose Peer
// side a server of its own serves with b (local), and the forwarding
// backend for the Public side.
func (s *Scheduler) clusterListen(b *httpBackend, ln net.Listener) (ingest.Backend, net.Listener, error) {
	c, err := s.clusterOf()
	if c == nil || err != nil {
		return b, ln, err
	}
	if ln == nil {
		if ln, err = net.Listen("tcp", s.opts.HTTPAddress); err != nil {
			return nil, nil, fmt.Errorf("ingest: %w", err)
		}
	}
	d := cluster.NewDemux(ln, c.m.Fingerprint(), s.opts.HTTPHeaderTimeout, s.logf)
	peerSrv, err := ingest.NewServer(s.httpServerOptions(d.Peer()), b)
	if err != nil {
		d.Public().Close()
		return nil, nil, err
	}
	d.OnClose(func() { peerSrv.ShutdownWithin(s.opts.ShutdownGrace) })
	go peerSrv.Serve()
	c.mu.Lock()
	c.demuxes = append(c.demuxes, d)
	c.mu.Unlock()
	return &clusterBackend{httpBackend: b, c: c}, d.Public(), nil
}

// clusterBackend is the client-facing backend of a cluster instance: the
// id-bearing requests of ids it does not own go to their owner.
type clusterBackend struct {
	*httpBackend
	c *clusterNode
}

func (b *clusterBackend) Publish(req *ingest.PubRequest) error {
	if req.ID == "" || b.c.m.Mine(req.ID) {
		return b.httpBackend.Publish(req)
	}
	r, err := b.c.forward(b.c.m.Owner(req.ID), "POST", pubQuery(req.Topic, req.Due, req.ID), req.Bodies[0])
	if err != nil {
		return err
	}
	return b.c.answer(r)
}

func pubQuery(topic string, due int64, id string) string {
	return "/pub?topic=" + url.QueryEscape(topic) + "&at=" + strconv.FormatInt(due, 10) + "&id=" + url.QueryEscape(id)
}

func (b *clusterBackend) Cancel(id string) error {
	if b.c.m.Mine(id) {
		return b.httpBackend.Cancel(id)
	}
	r, err := b.c.forward(b.c.m.Owner(id), "POST", "/cancel?id="+url.QueryEscape(id), nil)
	if err != nil {
		return err
	}
	return b.c.answer(r)
}

func (b *clusterBackend) Lookup(id, key string, body bool) (any, error) {
	if id == "" || b.c.m.Mine(id) {
		return b.httpBackend.Lookup(id, key, body)
	}
	r, err := b.c.forward(b.c.m.Owner(id), "GET", "/message?id="+url.QueryEscape(id)+"&body="+strconv.FormatBool(body), nil)
	if err != nil {
		return nil, err
	}
	if r.Status == 200 {
		if !json.Valid(r.Body) {
			b.c.s.logf("cluster: /message from %s: not JSON", b.c.m.Peers()[b.c.m.Owner(id)])
			return nil, errOwnerUnavailable
		}
		return json.RawMessage(r.Body), nil
	}
	return nil, b.c.answer(r)
}

func (b *clusterBackend) Reschedule(id, key string, dueMs int64) error {
	if id == "" || b.c.m.Mine(id) {
		return b.httpBackend.Reschedule(id, key, dueMs)
	}
	r, err := b.c.forward(b.c.m.Owner(id), "POST", "/reschedule?id="+url.QueryEscape(id)+"&at="+strconv.FormatInt(dueMs, 10), nil)
	if err != nil {
		return err
	}
	return b.c.answer(r)
}

// forward sends one request to peer i; no answer is errOwnerUnavailable.
func (c *clusterNode) forward(i int, method, pq string, body []byte) (cluster.Response, error) {
	r, err := c.fw.Do(i, method, pq, body)
	if err != nil {
		c.ownerUnavailable.Add(1)
		return r, errOwnerUnavailable
	}
	return r, nil
}

// answer is the error for ingest that reproduces the owner's answer r:
// nil for 200, else r's status and {"message":CODE}; an answer of another
// form (not deferd's) is OWNER_UNAVAILABLE.
func (c *clusterNode) answer(r cluster.Response) error {
	if r.Status == 200 {
		return nil
	}
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(r.Body, &e) != nil || e.Message == "" || r.Status < 300 {
		c.s.logf("cluster: owner answered %d %q: not deferd's form", r.Status, r.Body)
		c.ownerUnavailable.Add(1)
		return errOwnerUnavailable
	}
	if e.Message == "PEER_LIST_MISMATCH" {
		c.mismatchGot.Add(1)
	}
	return &ingest.Error{Code: r.Status, Text: e.Message}
}

func (b *clusterBackend) Info() any {
	m := b.httpBackend.Info().(map[string]any)
	m["cluster"] = map[string]any{
		"peers":       b.c.m.Peers(),
		"self":        b.c.m.Peers()[b.c.m.Self()],
		"fingerprint": b.c.m.Fingerprint(),
		"shards":      cluster.Shards,
	}
	return m
}

// ClusterStats is /stats' "cluster" section (Options.ClusterPeers set).
type ClusterStats struct {
	Self        string `json:"self"`
	Fingerprint string `json:"fingerprint"`
	// ShardMap states the map: "fnv1a32(id) % 256 -> peers[shard % N]".
	ShardMap string `json:"shard_map"`
	// Peers is every instance in peer order: reachable or not (from the
	// last forward or poll), its last error, its pending count (its last
	// /stats, polled every ClusterPollInterval; self's is current) and
	// its shards.
	Peers []cluster.PeerState `json:"peers"`
	// Forwarded counts requests sent to owners that answered;
	// ForwardFailed those that got no answer; OwnerUnavailable the 503
	// OWNER_UNAVAILABLE answers given (no answer, or not deferd's form).
	Forwarded        uint64 `json:"forwarded"`
	ForwardFailed    uint64 `json:"forward_failed"`
	OwnerUnavailable uint64 `json:"owner_unavailable"`
	// PeerListMismatch counts the PEER_LIST_MISMATCH answers relayed from
	// owners; MismatchRefused the peer connections this instance refused
	// for a foreign fingerprint; PeerConns those it took.
	PeerListMismatch uint64       `json:"peer_list_mismatch"`
	MismatchRefused  uint64       `json:"mismatch_refused_conns"`
	PeerConns        uint64       `json:"peer_conns"`
	Handoff          HandoffStats `json:"handoff"`
}

// HandoffStats is the hand-off of pending messages whose id this instance
// no longer owns: moved to their owner, failed tries (retried next pass),
// moved while in flight here (those may go out twice), passes made, what
// the last pass left, and whether a pass found none (then no more run).
type HandoffStats struct {
	Moved     uint64 `json:"moved"`
	Failed    uint64 `json:"failed"`
	InFlight  uint64 `json:"in_flight"`
	Passes    uint64 `json:"passes"`
	Remaining int64  `json:"remaining"`
	Done      bool   `json:"done"`
}

// clusterStats is nil without a cluster.
func (s *Scheduler) clusterStats() *ClusterStats {
	s.listenersMu.Lock()
	c := s.cluster
	s.listenersMu.Unlock()
	if c == nil {
		return nil
	}
	st := &ClusterStats{
		Self:             c.m.Peers()[c.m.Self()],
		Fingerprint:      c.m.Fingerprint(),
		ShardMap:         fmt.Sprintf("fnv1a32(id) %% %d -> peers[shard %% %d]", cluster.Shards, len(c.m.Peers())),
		Peers:            c.fw.States(s.Pending()),
		OwnerUnavailable: c.ownerUnavailable.Load(),
		PeerListMismatch: c.mismatchGot.Load(),
		Handoff: HandoffStats{
			Moved: c.handoffMoved.Load(), Failed: c.handoffFailed.Load(), InFlight: c.handoffInFlight.Load(),
			Passes: c.handoffPasses.Load(), Remaining: c.handoffRemaining.Load(), Done: c.handoffDone.Load(),
		},
	}
	st.Forwarded, st.ForwardFailed = c.fw.Counts()
	c.mu.Lock()
	for _, d := range c.demuxes {
		st.MismatchRefused += d.Mismatches.Load()
		st.PeerConns += d.PeerConns.Load()
	}
	c.mu.Unlock()
	return st
}

// loop polls the peers and hands off foreign ids, at once and every
// ClusterPollInterval, until Close.
func (c *clusterNode) loop() {
	t := time.NewTicker(c.s.opts.ClusterPollInterval)
	defer t.Stop()
	defer c.fw.Close()
	for {
		c.poll()
		if !c.handoffDone.Load() {
			c.handoff()
		}
		select {
		case <-c.s.stop:
			return
		case <-t.C:
		}
	}
}

// poll GETs every peer's /stats at once (each bounded by the forward
// timeout) and logs what changed in a peer's agreement.
func (c *clusterNode) poll() {
	var wg sync.WaitGroup
	for i, addr := range c.m.Peers() {
		if i == c.m.Self() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := c.fw.Do(i, "GET", "/stats", nil)
			if err != nil {
				c.fw.NotePoll(i, 0, err, true)
				c.warn(addr, "unreachable", "cluster: peer %s unreachable: %v", addr, err)
				return
			}
			var st struct {
				Pending int64 `json:"pending"`
				Cluster *struct {
					Fingerprint string `json:"fingerprint"`
				} `json:"cluster"`
			}
			switch {
			case r.Status == 503 && string(r.Body) == cluster.MismatchBody:
				c.fw.NotePoll(i, 0, errors.New("PEER_LIST_MISMATCH"), false)
				c.warn(addr, "mismatch", "cluster: WARNING: peer %s has another --cluster-peers list (it refuses ours, %s): requests for ids it owns get 503 PEER_LIST_MISMATCH until every instance has the same list", addr, c.m.Fingerprint())
			case r.Status != 200 || json.Unmarshal(r.Body, &st) != nil:
				c.fw.NotePoll(i, 0, fmt.Errorf("/stats answered %d", r.Status), false)
			case st.Cluster == nil || st.Cluster.Fingerprint != c.m.Fingerprint():
				c.fw.NotePoll(i, st.Pending, nil, false)
				c.warn(addr, "nocluster", "cluster: WARNING: peer %s runs without this peer list (no cluster or another fingerprint)", addr)
			default:
				c.fw.NotePoll(i, st.Pending, nil, false)
				c.warn(addr, "ok", "cluster: peer %s reachable, same peer list", addr)
			}
		}()
	}
	wg.Wait()
}

// warn logs msg when peer's state changed to what.
func (c *clusterNode) warn(peer, what, format string, args ...any) {
	c.mu.Lock()
	changed := c.warned[peer] != what
	first := c.warned[peer] == ""
	c.warned[peer] = what
	c.mu.Unlock()
	if changed && !(first && what == "ok") {
		c.s.logf(format, args...)
	}
}

// handoff makes one pass over what is pending, moving every message with
// an id another instance owns to that owner (see the hand-off above).
func (c *clusterNode) handoff() {
	c.handoffPasses.Add(1)
	s := c.s
	var remaining int64
	cur := ""
	for {
		page, err := s.ListPending(PendingQuery{Limit: MaxPendingLimit, Cursor: cur})
		if err != nil {
			return // closing
		}
		for _, pm := range page.Messages {
			if pm.ID == "" || c.m.Mine(pm.ID) {
				continue
			}
			if err := c.handOne(pm); err != nil {
				remaining++
				if errors.Is(err, ErrInFlight) {
					continue // going out now; if nsqd refuses it, the next pass
				}
				if c.handoffFailed.Add(1) == 1 || c.handoffFailed.Load()%1000 == 0 {
					s.logf("cluster: hand-off of id %q to %s: %v (retried every %v)", pm.ID, c.m.Peers()[c.m.Owner(pm.ID)], err, s.opts.ClusterPollInterval)
				}
			}
		}
		if page.Cursor == "" {
			break
		}
		cur = page.Cursor
	}
	c.handoffRemaining.Store(remaining)
	if remaining == 0 {
		if moved := c.handoffMoved.Load(); moved > 0 {
			s.logf("cluster: hand-off done: %d messages moved to their owners", moved)
		}
		c.handoffDone.Store(true)
	}
}

// handOne moves one pending message to its owner: /pub there, then the
// local cancel. nil once the owner has it (whatever the cancel found: a
// message that went out here meanwhile is a duplicate, at-least-once).
func (c *clusterNode) handOne(pm PendingMessage) error {
	key, err := ParseKey(pm.Key)
	if err != nil {
		return err
	}
	msg, err := c.s.readMessage(Ref{Key: key})
	if errors.Is(err, ErrNotFound) {
		return nil // gone meanwhile (published, cancelled)
	}
	if err != nil {
		return err
	}
	r, err := c.fw.Do(c.m.Owner(msg.ID), "POST", pubQuery(msg.Topic, msg.Due, msg.ID), msg.Body)
	if err != nil {
		return err
	}
	if r.Status != 200 {
		return fmt.Errorf("owner answered %d %s", r.Status, r.Body)
	}
	c.handoffMoved.Add(1)
	switch err := c.s.CancelRef(Ref{Key: key}); {
	case err == nil, errors.Is(err, ErrNotFound):
	case errors.Is(err, ErrInFlight):
		c.handoffInFlight.Add(1)
	default:
		return fmt.Errorf("moved, but the local cancel failed (retried; the owner deduplicates by id): %w", err)
	}
	return nil
}

// readMessage is the whole journal record of the pending message ref
// names; ErrNotFound if none, ErrInFlight if it is being handed to the
// sink.
func (s *Scheduler) readMessage(ref Ref) (journal.Message, error) {
	if !s.enter() {
		return journal.Message{}, ErrClosed
	}
	defer s.leave()
	for try := 0; ; try++ {
		_, m, again, err := s.readPending(ref, try)
		if again {
			continue // moved meanwhile
		}
		if err != nil {
			return journal.Message{}, err
		}
		return m, nil
	}
}
