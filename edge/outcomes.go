package edge

import "github.com/salt-broker/salt-broker/internal/wire"

// requestOutcomes is how a connection reports what became of the requests and
// cancels it carried: the one way calls go from the connection code (exchange.go,
// withdraw.go) to the request side, so that code can be tested against a fake
// that records the outcomes (fakesession_test.go). The Edge implements it:
// deliver and refused also reach the minion socket and the counters, the rest go
// to the request table.
type requestOutcomes interface {
	// deliver hands the core's reply to the request's minion, at most once.
	deliver(r *edgeReq, reply [][]byte)
	// refused ends a request the core will not answer.
	refused(r *edgeReq, ref wire.Refused)
	// requeue puts a request whose outcome is unknown back in line, to be sent
	// again under the same ID.
	requeue(r *edgeReq)
	// resolveRetry settles a minion retry once the core answered the cancel of
	// its earlier try with result.
	resolveRetry(r *edgeReq, result byte)
	// retryCancelLater keeps the cancel for the next connection.
	retryCancelLater(r *edgeReq)
}

func (e *Edge) requeue(r *edgeReq)                   { e.reqs.requeue(r) }
func (e *Edge) resolveRetry(r *edgeReq, result byte) { e.reqs.resolveRetry(r, result) }
func (e *Edge) retryCancelLater(r *edgeReq)          { e.reqs.retryCancelLater(r) }

var _ requestOutcomes = (*Edge)(nil)
