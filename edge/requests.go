package edge

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/salt-broker/salt-broker/internal/ratelog"
	"github.com/salt-broker/salt-broker/internal/saltmsg"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/internal/zmtp"
)

type reqState int

const (
	reqWaiting reqState = iota // in the queue for the next stream
	reqSending                 // on a stream now
)

// edgeReq is one minion request the edge holds until its reply arrives.
type edgeReq struct {
	id       uint64
	identity []byte   // the minion socket's routing id
	first    bool     // the first request of its socket (zmtp.Message.First)
	envelope [][]byte // frames up to the empty delimiter, echoed on the reply
	body     [][]byte // what the master gets; nil once nothing will send it (removeLocked, finish, settleLocked)
	env      saltmsg.Envelope
	created  time.Time
	size     int64 // bytes counted against --max-pending-bytes while it is pending

	state    reqState
	everSent bool // put on a stream at least once: it may have reached the core
	peerGone bool // the minion socket that asked has closed

	// Retry chains: what the chain index (chains.go) knows of this request, nil if
	// it is never chained; and the table's side of a chain (retry.go).
	try        *try
	cancelling bool     // a retry replaces it: never put it on a stream again
	replaces   *edgeReq // the chain's try that may have reached the core; this one waits for its withdrawal
	successor  *edgeReq // a later retry that took over this one's wait
}

// reqTable holds unanswered requests. A request leaves it exactly once: with its
// reply delivered, refused by the core, or dropped by its class policy.
type reqTable struct {
	host tableHost

	mu   sync.Mutex
	byID map[uint64]*edgeReq
	// The same requests by minion socket (a REQ has one unanswered at a time), so a
	// socket's close does not scan the whole table: Salt closes a channel per request.
	bySocket map[string][]*edgeReq
	waiting  []uint64 // FIFO of requests to put on a stream
	nextID   uint64
	kick     chan struct{}
	bytes    int64 // sizes of the requests in byID (--max-pending-bytes)

	// Log lines of the methods holding mu, written once it is released (unlock): a
	// slow log sink must not hold the table, and with it the ROUTER's callbacks,
	// the dispatch and /metrics.
	logs []logLine

	now      func() time.Time // the table's and the chain index's clock
	chains   *chainIndex      // which requests are tries of one minion's chain
	cancels  []*edgeReq       // retries waiting for the core to withdraw their earlier try
	draining bool             // the edge is stopping: nothing more is sent
}

// tableHost is what the request table needs of the edge: its settings, its
// counters and its log — nothing of the connections or the minion sockets. The
// edge is the host; it is asked each time, not copied, as the table is made before
// the metrics are.
type tableHost interface {
	tableConfig() *Config // read only
	tableMetrics() *metrics
	tableLog() (*slog.Logger, *ratelog.Limiter)
}

func (e *Edge) tableConfig() *Config                       { return &e.cfg }
func (e *Edge) tableMetrics() *metrics                     { return e.metrics }
func (e *Edge) tableLog() (*slog.Logger, *ratelog.Limiter) { return e.log, &e.warns }

func newReqTable(h tableHost) *reqTable {
	now := time.Now
	cfg := h.tableConfig()
	return &reqTable{host: h, byID: make(map[uint64]*edgeReq), bySocket: make(map[string][]*edgeReq), kick: make(chan struct{}, 1),
		now: now, chains: newChainIndex(now, chainLimits{window: cfg.RetryWindow, maxChain: cfg.MaxRetryChain, maxPending: cfg.MaxPending})}
}

type logLine struct {
	level slog.Level
	msg   string
	args  []any
}

// logLocked queues a log line until mu is released; the caller holds mu.
func (t *reqTable) logLocked(level slog.Level, msg string, args ...any) {
	if log, _ := t.host.tableLog(); log.Enabled(context.Background(), level) {
		t.logs = append(t.logs, logLine{level, msg, args})
	}
}

// unlock releases mu, then writes the log lines queued under it. Warnings go
// through the edge's limiter: one sweep of the class policy after an outage drops
// a whole backlog at once, and that is one line a second, not one per request.
func (t *reqTable) unlock() {
	lines := t.logs
	t.logs = nil
	t.mu.Unlock()
	if len(lines) == 0 {
		return
	}
	log, warns := t.host.tableLog()
	for _, l := range lines {
		if l.level >= slog.LevelWarn {
			warns.Log(log, l.level, "", l.msg, l.args...)
			continue
		}
		log.Log(context.Background(), l.level, l.msg, l.args...)
	}
}

func (t *reqTable) wake() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

func (t *reqTable) size() int {
	t.mu.Lock()
	defer t.unlock()
	return len(t.byID)
}

// pendingBytes is the size of what the table holds (--max-pending-bytes).
func (t *reqTable) pendingBytes() int64 {
	t.mu.Lock()
	defer t.unlock()
	return t.bytes
}

// Why add refused a request: its cause label in requests_dropped_total.
const (
	accepted   = ""
	tableFull  = "table_full"  // --max-pending requests held
	tableBytes = "table_bytes" // --max-pending-bytes held
)

// reqSize is what a request costs the edge while it holds it.
func reqSize(r *edgeReq) int64 {
	n := int64(len(r.identity))
	for _, f := range r.envelope {
		n += int64(len(f))
	}
	for _, f := range r.body {
		n += int64(len(f))
	}
	return n
}

// add accepts a request, or says which bound refused it: --max-pending requests,
// or --max-pending-bytes (a request alone always fits, so one of any allowed size
// gets through an empty table). A minion's own retry of a request the edge still
// holds joins that request's chain instead (retry.go) — also when the table is
// full, by either bound: it stands for a request already counted, and refusing it
// would let the earlier try and the minion's next one both reach the master.
func (t *reqTable) add(r *edgeReq) string {
	r.size = reqSize(r)
	r.try = newTry(0, r.identity, r.first, r.env, r.created)
	t.mu.Lock()
	prev := t.earlierTryLocked(r)
	if prev == nil {
		refused := accepted
		switch {
		case len(t.byID) >= t.host.tableConfig().MaxPending:
			refused = tableFull
		case t.bytes > 0 && t.bytes+r.size > t.host.tableConfig().MaxPendingBytes:
			refused = tableBytes
		}
		if refused != accepted {
			t.unlock()
			return refused
		}
	}
	t.nextID++
	r.id = t.nextID
	if r.try != nil {
		r.try.id = r.id
	}
	t.byID[r.id] = r
	t.bytes += r.size
	t.bySocket[string(r.identity)] = append(t.bySocket[string(r.identity)], r)
	if prev != nil {
		t.linkLocked(prev, r)
	}
	t.chains.note(r.try)
	t.waiting = append(t.waiting, r.id) // takeWaiting skips it while it is held
	t.unlock()
	t.wake()
	return accepted
}

// sendableLocked: r waits for a stream, and no retry chain holds it back.
func sendableLocked(r *edgeReq) bool {
	return r.state == reqWaiting && !r.cancelling && r.replaces == nil
}

// dropByClassLocked is the class policy (DESIGN §3.4), in one place: a sendable
// request nobody waits for any more — an auth request whose socket closed or older
// than --auth-max-age (its minion has retried), any request older than
// --request-max-age — is dropped, counted and (over-age) logged, and true returned.
// takeWaiting applies it before sending, so an outage never ends in a flood of
// requests nobody waits for; expire applies it on a timer whatever the link does,
// so through an outage such requests do not hold --max-pending slots.
func (t *reqTable) dropByClassLocked(r *edgeReq, now time.Time) bool {
	age := now.Sub(r.created)
	switch {
	case r.env.Class == saltmsg.ClassAuth && (r.peerGone || age > t.host.tableConfig().maxAge(r.env.Class)):
		t.removeLocked(r)
		t.host.tableMetrics().dropped.WithLabelValues("stale_auth").Inc()
	case age > t.host.tableConfig().maxAge(r.env.Class):
		t.removeLocked(r)
		t.host.tableMetrics().dropped.WithLabelValues("expired").Inc()
		t.logLocked(slog.LevelWarn, "request dropped unsent: older than --request-max-age", "minion", r.env.ID, "class", r.env.Class, "age", age.Round(time.Second))
	default:
		return false
	}
	return true
}

// takeWaiting returns the requests to put on streams now, applying the class policy
// to each.
func (t *reqTable) takeWaiting(now time.Time) []*edgeReq {
	t.mu.Lock()
	defer t.unlock()
	if t.draining {
		return nil
	}
	out := make([]*edgeReq, 0, len(t.waiting))
	for _, id := range t.waiting {
		r := t.byID[id]
		if r == nil || !sendableLocked(r) || t.dropByClassLocked(r, now) {
			continue
		}
		r.state = reqSending
		r.everSent = true
		if r.try != nil {
			r.try.sent = true
		}
		out = append(out, r)
	}
	t.waiting = t.waiting[:0]
	return out
}

// expireEvery is how often expire runs: well under --auth-max-age (30 s), and
// cheap (a pass over the waiting requests).
const expireEvery = time.Second

// expireLoop applies the class policy to the waiting requests every interval
// until ctx ends, whether or not a connection to the core is up.
func (t *reqTable) expireLoop(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			t.expire(now)
		}
	}
}

// expire drops the waiting requests the class policy says nobody waits for, and
// forgets the IDs of requests that left the queue otherwise; the rest keep their
// place. It also lets go of answers older than one RetryWindow when no request
// finishes to do it.
func (t *reqTable) expire(now time.Time) {
	t.mu.Lock()
	defer t.unlock()
	kept := t.waiting[:0]
	for _, id := range t.waiting {
		r := t.byID[id]
		if r == nil || (sendableLocked(r) && t.dropByClassLocked(r, now)) {
			continue
		}
		kept = append(kept, id)
	}
	t.waiting = kept
	t.chains.forgetAnswers(now)
}

// requeue puts a request whose stream failed back in line for the next connection.
func (t *reqTable) requeue(r *edgeReq) {
	t.mu.Lock()
	if t.byID[r.id] == r {
		r.state = reqWaiting
		t.waiting = append(t.waiting, r.id)
	}
	t.unlock()
	t.wake()
}

// finish removes a request, answered (its reply goes to its minion) or not; only
// the first caller gets true, which is what makes every reply reach its minion at
// most once.
func (t *reqTable) finish(r *edgeReq, answered bool) bool {
	t.mu.Lock()
	defer t.unlock()
	if t.byID[r.id] != r {
		return false
	}
	t.removeLocked(r)
	// finish is called from r's own exchange (exchange.go), after its send: nothing
	// reads the body any more. What the chain index keeps of r is its try: its
	// shape and times, not its bytes.
	r.body = nil
	t.chains.finished(r.try, answered, t.now())
	return true
}

// startDrain stops sending requests: a request sent during the drain could reach
// the master after the edge is gone, and its minion's retry through the next edge
// would reach it again.
func (t *reqTable) startDrain() {
	t.mu.Lock()
	t.draining = true
	t.unlock()
}

// sentUnanswered counts the requests that may have reached the core and have no
// reply yet. Once draining, nothing new is sent, so it only goes down.
func (t *reqTable) sentUnanswered() int {
	t.mu.Lock()
	defer t.unlock()
	n := 0
	for _, r := range t.byID {
		if r.everSent {
			n++
		}
	}
	return n
}

// connected notes that a connection to the core came up.
func (t *reqTable) connected(now time.Time) {
	t.mu.Lock()
	t.chains.connected(now)
	t.unlock()
}

// peerGone is zmtp's callback when a minion socket closes. Its unsent requests go
// through the class policy at once, which drops an auth request now (the minion
// retries auth with identical bytes on a new socket); everything else is kept until
// its max age: a job return must reach the master even if its minion gave up.
func (t *reqTable) peerGone(identity []byte) {
	t.mu.Lock()
	defer t.unlock()
	now := t.now()
	t.chains.socketGone(string(identity), func(earlier, retry *try) { t.linkLocked(earlier, t.byID[retry.id]) })
	for _, r := range slices.Clone(t.bySocket[string(identity)]) {
		r.peerGone = true
		if r.try != nil {
			r.try.peerGone = true
		}
		t.logLocked(slog.LevelDebug, "minion socket closed with a request unanswered", "id", r.id, "minion", r.env.ID, "socket", hex.EncodeToString(identity))
		if sendableLocked(r) && t.dropByClassLocked(r, now) {
			continue
		}
		t.orphanLocked(r)
	}
}

// removeLocked takes r out of the table (it is answered, refused or dropped).
func (t *reqTable) removeLocked(r *edgeReq) {
	delete(t.byID, r.id)
	t.chains.removed(r.try)
	t.bytes -= r.size
	if r.state == reqWaiting {
		// Not on a stream (requeue and takeWaiting switch the state under mu), so
		// nothing reads the body: released at once, whoever still points at r.
		r.body = nil
	}
	key := string(r.identity)
	list := slices.DeleteFunc(t.bySocket[key], func(n *edgeReq) bool { return n == r })
	if len(list) == 0 {
		delete(t.bySocket, key)
	} else {
		t.bySocket[key] = list
	}
}

// recvLoop takes minion requests from the ROUTER.
func (e *Edge) recvLoop(ctx context.Context) {
	for {
		msg, err := e.router.Recv(ctx)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, zmtp.ErrClosed) {
				e.log.Error("receiving minion requests stopped", "err", err)
			}
			return
		}
		e.accept(msg)
	}
}

func (e *Edge) accept(msg zmtp.Message) {
	// A REQ sends ["", body...]; the envelope is everything up to the first empty frame.
	split := 0
	for i, f := range msg.Frames {
		if len(f) == 0 {
			split = i + 1
			break
		}
	}
	r := &edgeReq{
		identity: msg.Identity,
		first:    msg.First,
		envelope: msg.Frames[:split],
		body:     msg.Frames[split:],
		created:  e.reqs.now(),
	}
	if len(r.body) > 0 {
		r.env, _ = saltmsg.Parse(r.body[0])
	}
	e.metrics.requestsIn.WithLabelValues(r.env.Class.String()).Inc()
	switch refused := e.reqs.add(r); refused {
	case accepted:
	case tableFull:
		// A full table refuses every minion of a site at once: one line a second.
		e.metrics.dropped.WithLabelValues(refused).Inc()
		e.warns.Log(e.log, slog.LevelWarn, "", "request dropped: the edge holds --max-pending requests already; the minion will retry",
			"minion", r.env.ID, "remote", msg.Remote, "limit", e.cfg.MaxPending)
		return
	default:
		e.metrics.dropped.WithLabelValues(refused).Inc()
		e.warns.Log(e.log, slog.LevelWarn, "", "request dropped: the edge holds --max-pending-bytes of requests already; the minion will retry",
			"minion", r.env.ID, "remote", msg.Remote, "size", r.size, "pending_bytes", e.reqs.pendingBytes(), "limit", e.cfg.MaxPendingBytes)
		return
	}
	if e.log.Enabled(context.Background(), slog.LevelDebug) {
		e.log.Debug("minion request", "id", r.id, "minion", r.env.ID, "class", r.env.Class, "load_len", r.env.LoadLen,
			"socket", hex.EncodeToString(r.identity), "remote", msg.Remote)
	}
}

// dispatchLoop puts waiting requests on streams of the pool's least-loaded
// connection (pool.dispatch), and waits while no connection is usable.
func (e *Edge) dispatchLoop(ctx context.Context) {
	for {
		_, changed := e.pool.snapshot()
		if e.pool.pick() == nil {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return
			}
		}
		for _, r := range e.reqs.takeWaiting(time.Now()) {
			if !e.pool.dispatch(r) { // its connection ended just now
				e.reqs.requeue(r)
			}
		}
		for _, r := range e.reqs.takeCancels() {
			if c := e.pool.pick(); c != nil {
				c.goCancel(r)
			} else {
				e.reqs.retryCancelLater(r)
			}
		}
		select {
		case <-e.reqs.kick:
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// deliver hands a reply to the minion that asked, once.
func (e *Edge) deliver(r *edgeReq, reply [][]byte) {
	if !e.reqs.finish(r, true) {
		e.metrics.dropped.WithLabelValues("superseded_reply").Inc()
		return
	}
	e.metrics.latency.Observe(time.Since(r.created).Seconds())
	frames := make([][]byte, 0, len(r.envelope)+len(reply))
	frames = append(frames, r.envelope...)
	frames = append(frames, reply...)
	switch err := e.router.Send(r.identity, frames); {
	case err == nil:
		e.metrics.replies.WithLabelValues("delivered").Inc()
	case errors.Is(err, zmtp.ErrUnknownPeer):
		e.metrics.replies.WithLabelValues("minion_gone").Inc()
	default:
		e.metrics.replies.WithLabelValues("send_failed").Inc()
		e.warns.Log(e.log, slog.LevelWarn, "", "reply could not be queued to its minion", "minion", r.env.ID, "err", err)
	}
}

// refused ends a request the core will not answer; the minion's own retry takes over.
func (e *Edge) refused(r *edgeReq, ref wire.Refused) {
	if !e.reqs.finish(r, false) {
		return
	}
	e.metrics.replies.WithLabelValues("refused").Inc()
	// An outage of the master refuses every queued request as stale at once: one
	// line a second per reason.
	e.warns.Log(e.log, slogLevelFor(ref.Code), "refused "+ref.Reason, "the core refused a request; the minion will retry it",
		"minion", r.env.ID, "class", r.env.Class, "reason", ref.Reason)
}
