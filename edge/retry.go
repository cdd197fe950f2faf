package edge

import (
	"log/slog"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
)

// A minion's retry of a request the edge still holds (chains.go recognises it)
// would show the master the return twice if passed on: the edge still holds the
// earlier copy, and will deliver it when the link is back. So the table keeps one
// copy of the chain:
//
//   - the earlier copy never left the edge: the retry replaces it (and gets a real reply);
//   - it may have reached the core: the edge asks the core to withdraw it; if it never
//     reached the master, the retry replaces it, otherwise the retry is dropped — the
//     master has the return once, and that minion may log it as failed, as it would on
//     a direct link.
//
// docs/guarantees.md says what can fool the recognition.

// earlierTryLocked returns the request r retries (pending, or settled: see
// settleLocked), if it is one, counting and logging what the rule for a try racing
// its reply decided.
func (t *reqTable) earlierTryLocked(r *edgeReq) *try {
	m := t.chains.earlierTry(r.try)
	if m.after != notAfterReply {
		t.host.tableMetrics().retriesAfterReply.WithLabelValues(string(m.after)).Inc()
	}
	if m.after == passedAfterReply {
		t.logLocked(slog.LevelDebug, "minion request may retry a return answered just before; passed on, the master may see it twice",
			"minion", r.env.ID, "earlier_id", m.answered.id, "since_answer", r.created.Sub(m.answered.answeredAt))
	}
	return m.earlier
}

// orphanLocked hands r, unanswered, whose minion socket just closed, to the chain
// index — unless a retry replaces it already — and links the retry that came
// first, if it is here.
func (t *reqTable) orphanLocked(r *edgeReq) {
	if r.cancelling {
		return
	}
	if n := t.chains.orphan(r.try); n != nil {
		t.linkLocked(r.try, t.byID[n.id])
	}
}

// settleLocked drops r, whose chain the master already has; the chain index keeps
// its try (not its request) for the chain's next try, which is dropped in turn.
func (t *reqTable) settleLocked(r *edgeReq, now time.Time) {
	t.removeLocked(r)
	t.host.tableMetrics().dropped.WithLabelValues("retry_at_master").Inc()
	r.body = nil // never sent again
	t.chains.settle(r.try, now)
}

// linkLocked makes r, a minion's retry, stand for prev (a try pending in the table
// or settled) in their chain. When the chain's try may have reached the core, r
// waits (replaces set) for the core to withdraw it.
func (t *reqTable) linkLocked(prev *try, r *edgeReq) {
	masterHasIt := t.chains.link(prev, r.try)
	t.host.tableMetrics().retries.Inc()
	t.logLocked(slog.LevelDebug, "minion retry recognised", "minion", r.env.ID, "id", r.id, "earlier_id", prev.id, "try", r.try.chain+1,
		"earlier_sent", prev.sent, "master_has_it", masterHasIt)
	if masterHasIt {
		// This try goes the way of the last one.
		t.settleLocked(r, r.created)
		return
	}
	p := t.byID[prev.id] // not settled: pending
	if p.replaces != nil {
		// p itself waits for the chain's sent try to be withdrawn: r takes over
		// that wait, so the chain still reaches the master once.
		r.replaces = p.replaces
		p.successor = r
		t.removeLocked(p)
		t.host.tableMetrics().dropped.WithLabelValues("retry_replaced").Inc()
		for i, c := range t.cancels {
			if c == p {
				t.cancels[i] = r
			}
		}
		return
	}
	if !p.everSent && p.state == reqWaiting {
		t.removeLocked(p)
		t.host.tableMetrics().dropped.WithLabelValues("retry_replaced").Inc()
		return
	}
	p.cancelling = true
	r.replaces = p
	t.cancels = append(t.cancels, r)
}

func (t *reqTable) takeCancels() []*edgeReq {
	t.mu.Lock()
	defer t.unlock()
	out := t.cancels
	t.cancels = nil
	return out
}

// resolveRetry applies the core's answer about r's earlier try.
func (t *reqTable) resolveRetry(r *edgeReq, result byte) {
	t.mu.Lock()
	for r.successor != nil {
		r = r.successor
	}
	prev := r.replaces
	if t.byID[prev.id] == prev {
		t.removeLocked(prev)
		t.host.tableMetrics().dropped.WithLabelValues("retry_replaced").Inc()
	}
	r.replaces = nil
	if result == wire.CancelDone {
		t.waiting = append(t.waiting, r.id)
	} else if t.byID[r.id] == r {
		t.settleLocked(r, t.now())
	}
	t.unlock()
	t.wake()
}

func (t *reqTable) retryCancelLater(r *edgeReq) {
	t.mu.Lock()
	t.cancels = append(t.cancels, r)
	t.unlock()
}

// withdrawer is the connection side of a chain's wait (withdraw.go): it asks the
// core to withdraw r.replaces, and reports the core's answer with resolveRetry, or
// its failure with retryCancelLater. It never blocks its caller, the dispatcher;
// the table itself does no tunnel I/O.
type withdrawer interface {
	goCancel(r *edgeReq)
}

var _ withdrawer = (*conn)(nil)
