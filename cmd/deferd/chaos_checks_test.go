package main

// Chaos test, the checks: which messages must be delivered, what is still
// missing, and the final verification (see chaos_test.go).

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// chaosRequired reports whether m must be delivered.
func chaosRequired(st *chaosState, cancelled map[string]bool, m *chaosMsg) bool {
	if m.status != 200 || m.kind == "dedupe" || m.kind == "retained" || st.truncLost[m.body] {
		return false
	}
	if m.id != "" && cancelled[m.id] {
		return false
	}
	return true
}

func chaosCancelledIDs(st *chaosState) map[string]bool {
	c := map[string]bool{}
	for _, x := range st.cancels {
		if x.status != 404 { // 200, 409, 503, transport error: may have removed it
			c[x.id] = true
		}
	}
	return c
}

func chaosMissing(st *chaosState) []*chaosMsg {
	st.mu.Lock()
	defer st.mu.Unlock()
	cancelled := chaosCancelledIDs(st)
	var out []*chaosMsg
	for _, m := range st.sent {
		if chaosRequired(st, cancelled, m) && len(st.delivered[m.body]) == 0 {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].seq < out[b].seq })
	return out
}

func chaosCheck(t *testing.T, st *chaosState, final map[string]any, stats map[string]float64, kinds []string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	cancelled := chaosCancelledIDs(st)
	var (
		nSent, nAcked, nRequired, nDeliv, dups int
		byKind                                 = map[string]int{}
		statusCount                            = map[int]int{}
		violations                             []string
	)
	add := func(format string, args ...any) {
		if len(violations) < 60 {
			violations = append(violations, fmt.Sprintf(format, args...))
		} else if len(violations) == 60 {
			violations = append(violations, "... (more)")
		}
	}
	// The lowest due time a reschedule of each id may have set.
	reschedLow := map[string]int64{}
	for _, r := range st.rescheds {
		if r.mayApply() {
			if v, ok := reschedLow[r.id]; !ok || r.lowNs < v {
				reschedLow[r.id] = r.lowNs
			}
		}
	}
	var lost []*chaosMsg
	for _, m := range st.sent {
		nSent++
		statusCount[m.status]++
		if m.status == 200 {
			nAcked++
			byKind[m.kind+m.delayKind()]++
		}
		if chaosRequired(st, cancelled, m) {
			nRequired++
			if len(st.delivered[m.body]) == 0 {
				lost = append(lost, m)
			}
		}
	}
	sort.Slice(lost, func(a, b int) bool { return lost[a].seq < lost[b].seq })
	for _, m := range lost {
		add("LOST: seq %d kind %s%s id %q topic %s cycle %d sent %s resp %s (+%v) minDue %s", m.seq, m.kind, m.delay, m.id, m.topic, m.cycle,
			tfmt(m.sendNs), tfmt(m.respNs), time.Duration(m.respNs-m.sendNs), tfmt(m.minDueNs))
	}
	for body, ds := range st.delivered {
		nDeliv += len(ds)
		dups += len(ds) - 1
		m, ok := st.sent[body]
		if !ok {
			add("UNKNOWN BODY delivered (never sent, crc ok %v): %q", chaosBodyOK(body), tail(body, 200))
			continue
		}
		dueLow, note := m.minDueNs, ""
		if v, ok := reschedLow[m.id]; ok && m.id != "" && v < dueLow {
			dueLow, note = v, " (lowered by a reschedule)"
		}
		for _, d := range ds {
			if d.nsqdTs < dueLow {
				add("EARLY: seq %d kind %s%s cycle %d: nsqd got it %v before its due lower bound%s (sent %s, minDue %s, nsqd ts %s)",
					m.seq, m.kind, m.delay, m.cycle, time.Duration(dueLow-d.nsqdTs), note, tfmt(m.sendNs), tfmt(dueLow), tfmt(d.nsqdTs))
			}
		}
		if m.kind == "dedupe" && m.status == 200 {
			b1 := st.bySeq[m.dedupeOf]
			first := int64(1<<63 - 1)
			for _, d := range st.delivered[b1.body] {
				first = min(first, d.nsqdTs)
			}
			if first > m.respNs {
				add("DEDUPE: seq %d (id %s) delivered though its id's first body seq %d was pending for the whole request (first nsqd ts %s > resp %s)",
					m.seq, m.id, b1.seq, tfmt(first), tfmt(m.respNs))
			}
		}
	}
	// Cancel: nothing with the id published to nsqd after a reliable 200.
	bodiesByID := map[string][]*chaosMsg{}
	for _, m := range st.sent {
		if m.id != "" {
			bodiesByID[m.id] = append(bodiesByID[m.id], m)
		}
	}
	nCancel200 := 0
	for _, c := range st.cancels {
		if c.status != 200 {
			continue
		}
		nCancel200++
		if !c.reliable {
			continue
		}
		for _, m := range bodiesByID[c.id] {
			for _, d := range st.delivered[m.body] {
				if d.nsqdTs > c.respNs {
					add("CANCELLED DELIVERED: id %s (seq %d, %s%s, cycle %d) cancel 200 in cycle %d at %s, published to nsqd %v later at %s (minDue %s)",
						c.id, m.seq, m.kind, m.delay, m.cycle, c.cycle, tfmt(c.respNs), time.Duration(d.nsqdTs-c.respNs), tfmt(d.nsqdTs), tfmt(m.minDueNs))
				}
			}
		}
	}
	// Reschedule: after a reliable 200 sent at S with new due at least L,
	// nothing with the id is published in [S, L), up to the id's next
	// reschedule that may have applied (which may have moved it earlier).
	// A delivery before S (e.g. one redelivered after a crash) is allowed.
	reschedByID := map[string][]*chaosResched{}
	for _, r := range st.rescheds {
		reschedByID[r.id] = append(reschedByID[r.id], r)
	}
	nRes200, nResChecked, nResDelivAfter := 0, 0, 0
	for id, rs := range reschedByID {
		sort.Slice(rs, func(a, b int) bool { return rs[a].sendNs < rs[b].sendNs })
		for i, r := range rs {
			if r.status != 200 {
				continue
			}
			nRes200++
			if !r.reliable {
				continue
			}
			nResChecked++
			end := int64(1<<63 - 1)
			for _, r2 := range rs[i+1:] {
				if r2.mayApply() {
					end = r2.sendNs
					break
				}
			}
			for _, m := range bodiesByID[id] {
				for _, d := range st.delivered[m.body] {
					if d.nsqdTs < r.sendNs || d.nsqdTs >= end {
						continue
					}
					nResDelivAfter++
					if d.nsqdTs < r.lowNs {
						add("RESCHEDULED EARLY: id %s (seq %d, %s%s, cycle %d) reschedule%s 200 in cycle %d (sent %s, answered %s), published to nsqd at %s, %v before its new due lower bound %s",
							id, m.seq, m.kind, m.delay, m.cycle, r.q, r.cycle, tfmt(r.sendNs), tfmt(r.respNs), tfmt(d.nsqdTs), time.Duration(r.lowNs-d.nsqdTs), tfmt(r.lowNs))
					}
				}
			}
		}
	}
	// Retention: a retained probe (another body for an id, sent after a
	// delivery of the id's message and answered 200 within the retention
	// window from that delivery, less a margin) must schedule nothing.
	margin := int64(100 * time.Millisecond)
	nRetProbe, nRetInWindow := 0, 0
	retStatus := map[int]int{}
	for _, m := range st.sent {
		if m.kind != "retained" {
			continue
		}
		nRetProbe++
		retStatus[m.status]++
		if m.status != 200 || st.retUnreliable[m.id] {
			continue
		}
		b1 := st.bySeq[m.dedupeOf]
		var from int64
		for _, d := range st.delivered[b1.body] {
			if d.nsqdTs < m.sendNs && m.respNs < d.nsqdTs+int64(chaosIDRetention)-margin {
				from = d.nsqdTs
				break
			}
		}
		if from == 0 {
			continue
		}
		nRetInWindow++
		for _, d := range st.delivered[m.body] {
			add("RETAINED DELIVERED: seq %d (id %s, %s, cycle %d) sent %s, answered 200 at %s, %v after a delivery of the id's seq %d (nsqd ts %s; retention %v), published to nsqd at %s",
				m.seq, m.id, m.delay, m.cycle, tfmt(m.sendNs), tfmt(m.respNs), time.Duration(m.respNs-from), b1.seq, tfmt(from), chaosIDRetention, tfmt(d.nsqdTs))
		}
	}
	reschedStatus := map[int]int{}
	for _, r := range st.rescheds {
		reschedStatus[r.status]++
	}
	t.Logf("reschedules %v (200: %d, checked %d, deliveries checked against them %d); retained probes %d (status %v, answered within the window %d, retention-unreliable ids %d)",
		reschedStatus, nRes200, nResChecked, nResDelivAfter, nRetProbe, retStatus, nRetInWindow, len(st.retUnreliable))
	cancelStatus := map[int]int{}
	for _, c := range st.cancels {
		cancelStatus[c.status]++
	}
	kindCount := map[string]int{}
	for _, k := range kinds {
		kindCount[k]++
	}
	t.Logf("coverage: cycles %v; messages sent %d (status %v), acked %d, required %d, deliveries %d (duplicates %d); cancels %v; truncation-lost %d; acked by kind %v; deferd stats summed over cycles %v",
		kindCount, nSent, statusCount, nAcked, nRequired, nDeliv, dups, cancelStatus, len(st.truncLost), byKind, stats)
	if final != nil {
		t.Logf("final: pending %v published %v early %v recovery %v", final["pending"], final["published"], final["delivered_early"], final["recovery"])
		if p, _ := final["pending"].(float64); p != 0 {
			add("final pending %v != 0 after everything came due", p)
		}
	}
	for _, v := range violations {
		t.Error(v)
	}
}

func (m *chaosMsg) delayKind() string {
	switch {
	case m.delay == "" || m.delay == "&defer=0":
		return "/now"
	case strings.HasPrefix(m.delay, "&at="):
		return "/at"
	default:
		return "/defer"
	}
}

func tfmt(ns int64) string { return time.Unix(0, ns).Format("15:04:05.000000") }
