package egress

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// view is the set of nsqds Publish picks from. A view is never modified
// once stored in Publisher.view: a change stores a new one.
type view struct {
	nodes []*node
	conns []*conn // all connections of all nodes, node-major
}

func (v *view) add(n *node) {
	v.nodes = append(v.nodes, n)
	v.conns = append(v.conns, n.conns...)
}

// lookupd is the discovery side of a Publisher: the nsqlookupd it polls.
type lookupd struct {
	urls    []string // GET these: each nsqlookupd's /nodes
	client  *http.Client
	tr      *http.Transport
	ctx     context.Context
	cancel  context.CancelFunc
	timeout time.Duration
	failing []bool // per url: the last query failed (log transitions only); poll's own
}

func newLookupd(o Options) *lookupd {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: o.DialTimeout}).DialContext,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     2 * o.LookupdPollInterval,
	}
	l := &lookupd{
		client:  &http.Client{Transport: tr},
		tr:      tr,
		timeout: o.Timeout,
		failing: make([]bool, len(o.LookupdHTTPAddrs)),
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	for _, a := range o.LookupdHTTPAddrs {
		u, _ := lookupdNodesURL(a) // validated
		l.urls = append(l.urls, u)
	}
	return l
}

func (l *lookupd) closeIdle() { l.tr.CloseIdleConnections() }

// lookupdNodesURL returns the /nodes URL of an nsqlookupd given as
// host:port or as an http(s) base URL (as go-nsq takes them).
func lookupdNodesURL(addr string) (string, error) {
	raw := addr
	if !strings.Contains(raw, "://") {
		if _, _, err := net.SplitHostPort(raw); err != nil {
			return "", fmt.Errorf("%q is not host:port or an http:// URL: %w", addr, err)
		}
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%q is not host:port or an http:// URL", addr)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/nodes"
	return u.String(), nil
}

// nodesResponse is the part of nsqlookupd's GET /nodes answer egress reads.
type nodesResponse struct {
	Producers []struct {
		BroadcastAddress string `json:"broadcast_address"`
		TCPPort          int    `json:"tcp_port"`
	} `json:"producers"`
}

// maxNodesResponse bounds the body of a /nodes answer egress reads.
const maxNodesResponse = 16 << 20

// query asks one nsqlookupd for its nsqds: broadcast_address:tcp_port of
// each producer it lists, whatever topics it has (nsqd registers with
// nsqlookupd as it starts, before any topic exists).
func (l *lookupd) query(u string) ([]string, error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/vnd.nsq; version=1.0")
	resp, err := l.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxNodesResponse))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var nr nodesResponse
	if err := json.Unmarshal(body, &nr); err != nil {
		return nil, fmt.Errorf("bad /nodes answer: %w", err)
	}
	var addrs []string
	for _, pr := range nr.Producers {
		if pr.BroadcastAddress == "" || pr.TCPPort <= 0 || pr.TCPPort > 65535 {
			continue
		}
		addrs = append(addrs, net.JoinHostPort(pr.BroadcastAddress, strconv.Itoa(pr.TCPPort)))
	}
	return addrs, nil
}

// pollLoop polls every LookupdPollInterval until Stop. It is the only
// caller of poll after New.
func (p *Publisher) pollLoop() {
	defer p.loops.Done()
	t := time.NewTicker(p.opts.LookupdPollInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stopCh:
			return
		case <-t.C:
			p.poll()
		}
	}
}

// poll asks every nsqlookupd at once and applies the union of what they
// list. A node is removed only when every nsqlookupd answered and none
// lists it: with one of them failing, the others' answers only add (an
// nsqlookupd that is down says nothing about the nsqds). Not concurrent
// with itself.
func (p *Publisher) poll() {
	l := p.lookupd
	addrs := make([][]string, len(l.urls))
	errs := make([]error, len(l.urls))
	var wg sync.WaitGroup
	for i, u := range l.urls {
		wg.Go(func() { addrs[i], errs[i] = l.query(u) })
	}
	wg.Wait()
	if l.ctx.Err() != nil {
		return // stopping
	}
	found := make(map[string]bool)
	complete, answered := true, 0
	for i, err := range errs {
		if err != nil {
			complete = false
			if !l.failing[i] {
				p.opts.Logf("egress: nsqlookupd %s: %v (keeping the nsqds known)", l.urls[i], err)
			}
			l.failing[i] = true
			continue
		}
		if l.failing[i] {
			p.opts.Logf("egress: nsqlookupd %s answers again", l.urls[i])
		}
		l.failing[i] = false
		answered++
		for _, a := range addrs[i] {
			found[a] = true
		}
	}
	if answered > 0 {
		p.apply(found, complete)
	}
}

// apply makes the view's discovered nsqds those in found: it adds the new
// ones (with their connections) and, if complete, removes and drains those
// no longer listed. Static nodes stay. An address whose previous node is
// still draining is added by a poll after the drain ends.
func (p *Publisher) apply(found map[string]bool, complete bool) {
	p.viewMu.Lock()
	defer p.viewMu.Unlock()
	old := p.view.Load()
	have := make(map[string]bool, len(old.nodes))
	nv := &view{}
	var removed []*node
	for _, n := range old.nodes {
		have[n.addr] = true
		if n.static || found[n.addr] || !complete {
			nv.add(n)
			continue
		}
		removed = append(removed, n)
	}
	var added []string
	for a := range found {
		if !have[a] && p.draining[a] == nil {
			added = append(added, a)
		}
	}
	slices.Sort(added)
	for _, a := range added {
		nv.add(p.newNodeConns(a))
		p.opts.Logf("egress: nsqd %s discovered", a)
	}
	if len(removed) == 0 && len(nv.nodes) == len(old.nodes) {
		return
	}
	p.view.Store(nv)
	for _, n := range removed {
		n.gone.Store(true) // after the Store: a send that picked it from the old view sees it
		p.draining[n.addr] = n
		p.opts.Logf("egress: nsqd %s no longer listed by nsqlookupd: draining", n.addr)
		p.loops.Add(1)
		go p.drain(n)
	}
}

// drain waits until no batch is in flight to n (removed from the view, gone
// set, so none starts), stops its links and unregisters its metrics.
// Batches in flight finish on n: their outcome goes to their Publish call
// as any other's. Bounded by those batches' Timeout (and a connect in
// progress; see Stop).
func (p *Publisher) drain(n *node) {
	defer p.loops.Done()
	t := time.NewTicker(5 * time.Millisecond)
	for n.inFlight.Load() > 0 {
		<-t.C
	}
	t.Stop()
	var wg sync.WaitGroup
	for _, c := range n.conns {
		// Swap: a concurrent replace's CompareAndSwap then fails, and
		// its fresh link, never dialled, is dropped.
		if l := c.link.Swap(nil); l != nil {
			wg.Go(l.stop)
		}
	}
	wg.Wait()
	p.viewMu.Lock()
	delete(p.draining, n.addr)
	n.unregister(p.set)
	p.viewMu.Unlock()
	p.opts.Logf("egress: nsqd %s drained", n.addr)
}
