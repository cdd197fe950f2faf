package edge

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/salt-broker/salt-broker/internal/saltmsg"
	"github.com/salt-broker/salt-broker/internal/wire"
)

// A Salt minion whose return gets no reply in 5–10 s closes its REQ socket and at
// once sends the return again on a new one, re-encrypted: new bytes, same length, up
// to return_retry_tries (3) sends. The edge still holds the earlier copy, and will
// deliver it when the link is back, so passing the retry on too would show the master
// the return twice. So the edge recognises the retry and keeps one copy of the chain:
//
//   - the earlier copy never left the edge: the retry replaces it (and gets a real reply);
//   - it may have reached the core: the edge asks the core to withdraw it; if it never
//     reached the master, the retry replaces it, otherwise the retry is dropped — the
//     master has the return once, and that minion may log it as failed, as it would on
//     a direct link.
//
// A retry is recognised by its envelope shape — the same enc, the same clear minion
// id and the same load length — and by when it comes (earlierTryLocked has the three
// rules). docs/guarantees.md says what can fool them.

// chainKey is the envelope shape a minion's retry shares with its earlier try.
type chainKey struct {
	enc, minion string
	loadLen     int
}

func keyOf(r *edgeReq) (chainKey, bool) {
	if r.env.Class != saltmsg.ClassAES || r.env.ID == "" || r.env.LoadLen == 0 {
		return chainKey{}, false
	}
	return chainKey{enc: r.env.Enc, minion: r.env.ID, loadLen: r.env.LoadLen}, true
}

// orphanLocked remembers an unanswered request whose minion socket just closed. The
// minion's retry may already be here — its new connection raced the old one's close —
// in which case it joins the chain now, if it has not been sent yet.
func (t *reqTable) orphanLocked(r *edgeReq) {
	k, ok := keyOf(r)
	if !ok || r.cancelling {
		return
	}
	r.goneAt = time.Now()
	for _, rt := range t.recent[k] {
		n := t.byID[rt.id] // only a pending request can be the retry
		if n != nil && n != r && n.state == reqWaiting && !n.everSent && n.replaces == nil && n.chain == 0 &&
			!n.peerGone && n.created.After(r.created) && r.goneAt.Sub(n.created) <= t.e.cfg.RetryWindow && r.chain+1 < t.e.cfg.MaxRetryChain {
			t.linkLocked(r, n)
			return
		}
	}
	t.orphans[k] = append(t.orphans[k], r)
	if len(t.orphans) > 4*t.e.cfg.MaxPending/3+64 {
		t.pruneOrphansLocked(r.goneAt)
	}
}

func (t *reqTable) pruneOrphansLocked(now time.Time) {
	for k, list := range t.orphans {
		kept := list[:0]
		for _, o := range list {
			if now.Sub(o.goneAt) <= t.e.cfg.RetryWindow && t.chainMemberLocked(o) {
				kept = append(kept, o)
			}
		}
		if len(kept) == 0 {
			delete(t.orphans, k)
		} else {
			t.orphans[k] = kept
		}
	}
}

// earlierTryLocked returns the request r retries, if it is one (it is then taken
// off the orphans, and the caller links the two). Three rules, all on the envelope
// shape (same enc, same clear minion id, same load length):
//
//   - the earlier request's socket closed unanswered, and r comes within
//     RetryWindow of that close (orphanLocked covers r arriving first);
//   - r is the first request of a new socket, and the earlier one is still
//     unanswered on another socket and at least minRetryAge old. A Salt 3007 minion
//     whose return timed out sends the retry on a new REQ socket, and the old
//     socket's close may reach the edge much later (seen with a real minion: not
//     before the old request was answered);
//   - r is the first request of a new socket, just after the earlier one was
//     answered, one retry timer after it (retryOfAnsweredLocked). Soon after an
//     answer alone is not enough: Salt's job processes close a channel after its
//     answer and open a new one for the next request, often of the same length
//     (cp.get_file).
func (t *reqTable) earlierTryLocked(r *edgeReq) *edgeReq {
	k, ok := keyOf(r)
	if !ok || t.e.cfg.RetryWindow <= 0 {
		return nil
	}
	list := t.orphans[k]
	for i := len(list) - 1; i >= 0; i-- {
		o := list[i]
		if t.chainMemberLocked(o) && r.created.Sub(o.goneAt) <= t.e.cfg.RetryWindow && o.chain+1 < t.e.cfg.MaxRetryChain {
			if list = append(list[:i], list[i+1:]...); len(list) == 0 {
				delete(t.orphans, k)
			} else {
				t.orphans[k] = list
			}
			return o
		}
	}
	if _, seen := t.sockets[string(r.identity)]; seen {
		return nil
	}
	o := t.lastOfShape[k]
	if o == nil || bytes.Equal(o.identity, r.identity) || o.chain+1 >= t.e.cfg.MaxRetryChain ||
		r.created.Sub(o.created) < minRetryAge {
		return nil
	}
	if !o.answeredAt.IsZero() {
		return t.retryOfAnsweredLocked(o, r)
	}
	if !t.unansweredLocked(o) {
		return nil
	}
	return o
}

// retryOfAnsweredLocked: o was answered a moment before r, a first request of a
// new socket with o's shape, came. When o's reply reaches its minion just as the
// minion's retry timer fires, the minion sends its next try anyway: the reply is
// lost to it, and the master already has the chain. Salt draws return_retry_timer
// once per return and waits it out before every try, so a try that comes one
// timer after o — the gap o itself came after its previous try — is o's next try,
// and it is dropped like any try of a chain the master has. A first try's timer is
// not known (it has no previous try), and Salt's job processes send same-shape
// requests on new sockets right after an answer (cp.get_file), so a request that
// only comes soon after an answer is passed on; it is counted when the answer was
// held up by an outage, when a retry of it is likely.
func (t *reqTable) retryOfAnsweredLocked(o, r *edgeReq) *edgeReq {
	if r.created.Sub(o.answeredAt) > t.e.cfg.RetryWindow {
		return nil
	}
	if gap := r.created.Sub(o.created); o.chain > 0 && (gap-o.tryGap).Abs() <= retryTimerSlack {
		t.e.metrics.retriesAfterReply.WithLabelValues("dropped").Inc()
		return o
	}
	if o.created.Before(t.upSince) && t.upSince.Before(o.answeredAt) {
		t.e.metrics.retriesAfterReply.WithLabelValues("passed").Inc()
		t.logLocked(slog.LevelDebug, "minion request may retry a return answered just before; passed on, the master may see it twice",
			"minion", r.env.ID, "earlier_id", o.id, "since_answer", r.created.Sub(o.answeredAt))
	}
	return nil
}

// retryTimerSlack is how far a minion's tries may drift from its retry timer, as
// seen at the edge: its event loop's lateness and its new socket's connect (a real
// Salt 3007 minion's third try came 0.1–0.3 s sooner after its second than the
// second after its first).
const retryTimerSlack = time.Second

// noteShapeLocked indexes r for the retries that may follow it: its socket has
// now sent a request, and it is its minion's newest request of its shape.
func (t *reqTable) noteShapeLocked(r *edgeReq) {
	k, ok := keyOf(r)
	if !ok || t.e.cfg.RetryWindow <= 0 {
		return
	}
	t.sockets[string(r.identity)] = struct{}{}
	t.lastOfShape[k] = r
	if len(t.lastOfShape) > t.e.cfg.MaxPending+64 {
		for key, n := range t.lastOfShape {
			if !t.chainMemberLocked(n) {
				delete(t.lastOfShape, key)
			}
		}
	}
	t.noteRecentLocked(r)
}

// minRetryAge: a minion retries only after its return_retry_timer (5 s by default;
// Salt's other channels wait 60 s), so a same-shape request sooner than this is a
// request of its own.
const minRetryAge = time.Second

// unansweredLocked: o still waits for its reply (or was dropped because the master
// has its chain) and its socket has not been seen closing.
func (t *reqTable) unansweredLocked(o *edgeReq) bool {
	return !o.peerGone && t.chainMemberLocked(o)
}

// chainMemberLocked: a later try of o's chain still has o to join — o is pending,
// or was dropped because the master has the chain.
func (t *reqTable) chainMemberLocked(o *edgeReq) bool {
	return t.byID[o.id] == o || t.settled[o.id] == o
}

// settleLocked drops r, whose chain the master already has, and keeps it (not
// pending) for the chain's next try, which is dropped in turn — unless the chain is
// complete.
func (t *reqTable) settleLocked(r *edgeReq, now time.Time) {
	t.removeLocked(r)
	t.e.metrics.dropped.WithLabelValues("retry_at_master").Inc()
	if r.chain+1 >= t.e.cfg.MaxRetryChain {
		return
	}
	r.settledAt = now
	r.body = nil // never sent again
	t.settled[r.id] = r
	if len(t.settled) > 1024 {
		t.pruneSettledLocked(now)
	}
}

// settledKeep bounds how long a settled try waits for its minion's next one: Salt's
// return_retry_timer_max is 10 s by default, 60 s is generous.
const settledKeep = time.Minute

func (t *reqTable) pruneSettledLocked(now time.Time) {
	for id, r := range t.settled {
		gone := !r.goneAt.IsZero() && now.Sub(r.goneAt) > t.e.cfg.RetryWindow
		if gone || now.Sub(r.settledAt) > settledKeep || len(t.settled) > t.e.cfg.MaxPending {
			delete(t.settled, id)
		}
	}
}

// linkLocked makes r, a minion's retry, stand for prev in their chain. When the
// chain's try may have reached the core, r waits (replaces set) for the core to
// withdraw it.
func (t *reqTable) linkLocked(prev, r *edgeReq) {
	r.chain = prev.chain + 1
	r.tryGap = r.created.Sub(prev.created)
	masterHasIt := !prev.settledAt.IsZero() || !prev.answeredAt.IsZero()
	t.e.metrics.retries.Inc()
	t.logLocked(slog.LevelDebug, "minion retry recognised", "minion", r.env.ID, "id", r.id, "earlier_id", prev.id, "try", r.chain+1,
		"earlier_sent", prev.everSent, "master_has_it", masterHasIt)
	if masterHasIt {
		// This try goes the way of the last one.
		delete(t.settled, prev.id)
		t.settleLocked(r, r.created)
		return
	}
	if prev.replaces != nil {
		// prev itself waits for the chain's sent try to be withdrawn: r takes over
		// that wait, so the chain still reaches the master once.
		r.replaces = prev.replaces
		prev.successor = r
		t.removeLocked(prev)
		t.e.metrics.dropped.WithLabelValues("retry_replaced").Inc()
		for i, c := range t.cancels {
			if c == prev {
				t.cancels[i] = r
			}
		}
		return
	}
	if !prev.everSent && prev.state == reqWaiting {
		t.removeLocked(prev)
		t.e.metrics.dropped.WithLabelValues("retry_replaced").Inc()
		return
	}
	prev.cancelling = true
	r.replaces = prev
	t.cancels = append(t.cancels, r)
}

// recentTry is what recent keeps of a request: its ID (the rest, while it is
// pending, is in byID) and when it came. Its shape is the key. Nothing of its
// bytes: a finished request's body is let go at once, not after the window.
type recentTry struct {
	id      uint64
	created time.Time
}

// noteRecentLocked keeps new requests for one RetryWindow, so a retry that arrives
// before its minion's old connection is seen closing is still recognised.
func (t *reqTable) noteRecentLocked(r *edgeReq) {
	k, ok := keyOf(r)
	if !ok {
		return
	}
	list := t.recent[k]
	kept := list[:0]
	for _, n := range list {
		if r.created.Sub(n.created) <= t.e.cfg.RetryWindow {
			kept = append(kept, n)
		}
	}
	t.recent[k] = append(kept, recentTry{id: r.id, created: r.created})
	if len(t.recent) > t.e.cfg.MaxPending+64 {
		for key, l := range t.recent {
			if len(l) == 0 || r.created.Sub(l[len(l)-1].created) > t.e.cfg.RetryWindow {
				delete(t.recent, key)
			}
		}
	}
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
		t.e.metrics.dropped.WithLabelValues("retry_replaced").Inc()
	}
	r.replaces = nil
	if result == wire.CancelDone {
		t.waiting = append(t.waiting, r.id)
	} else if t.byID[r.id] == r {
		t.settleLocked(r, time.Now())
	}
	t.unlock()
	t.wake()
}

func (t *reqTable) retryCancelLater(r *edgeReq) {
	t.mu.Lock()
	t.cancels = append(t.cancels, r)
	t.unlock()
}

// goCancel asks the core to withdraw r's earlier try, then resolves the chain.
func (c *conn) goCancel(r *edgeReq) {
	started := c.goWork(func() {
		res, err := c.withdraw(r.replaces.id)
		if err != nil {
			c.log.Debug("cancel failed; asking again on the next connection", "err", err)
			c.e.reqs.retryCancelLater(r)
			return
		}
		c.log.Debug("minion retry resolved", "minion", r.env.ID, "earlier_id", r.replaces.id, "result", res)
		c.e.reqs.resolveRetry(r, res)
	})
	if !started {
		c.e.reqs.retryCancelLater(r)
	}
}

func (c *conn) withdraw(id uint64) (byte, error) {
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	st, err := c.sess.OpenStream(ctx)
	if err != nil {
		return 0, fmt.Errorf("open cancel stream: %w", err)
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { _ = st.Close() })
	defer stop()
	_ = st.SetDeadline(time.Now().Add(30 * time.Second))
	if err := wire.Write(st, wire.TCancel, wire.U64Body(id)); err != nil {
		return 0, fmt.Errorf("send cancel: %w", err)
	}
	body, err := wire.NewReader(st, 1<<10).Expect(wire.TCancelReply)
	if err != nil {
		return 0, fmt.Errorf("read cancel answer: %w", err)
	}
	rep, err := wire.DecodeCancelReply(body)
	if err != nil || rep.ID != id {
		return 0, fmt.Errorf("bad cancel answer for %d: %w", id, wire.ErrMalformed)
	}
	return rep.Result, nil
}
