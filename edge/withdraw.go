package edge

import (
	"context"
	"fmt"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
)

const (
	// withdrawTimeout bounds one cancel exchange with the core; a core too slow to
	// answer in this is asked again on the next connection.
	withdrawTimeout = 30 * time.Second
	// cancelReplyMax is the largest cancel reply accepted: an ID and a result byte.
	cancelReplyMax = 1 << 10
)

// goCancel asks the core to withdraw r's earlier try, then resolves the chain.
func (c *conn) goCancel(r *edgeReq) {
	started := c.goWork(func() {
		res, err := c.withdraw(r.replaces.id)
		if err != nil {
			c.log.Debug("cancel failed; asking again on the next connection", "err", err)
			c.outcomes.retryCancelLater(r)
			return
		}
		c.log.Debug("minion retry resolved", "minion", r.env.ID, "earlier_id", r.replaces.id, "result", res)
		c.outcomes.resolveRetry(r, res)
	})
	if !started {
		c.outcomes.retryCancelLater(r)
	}
}

func (c *conn) withdraw(id uint64) (byte, error) {
	ctx, cancel := context.WithTimeout(c.ctx, withdrawTimeout)
	defer cancel()
	st, err := c.sess.OpenStream(ctx)
	if err != nil {
		return 0, fmt.Errorf("open cancel stream: %w", err)
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { _ = st.Close() })
	defer stop()
	_ = st.SetDeadline(time.Now().Add(withdrawTimeout))
	if err := wire.Write(st, wire.TCancel, wire.U64Body(id)); err != nil {
		return 0, fmt.Errorf("send cancel: %w", err)
	}
	body, err := wire.NewReader(st, cancelReplyMax).Expect(wire.TCancelReply)
	if err != nil {
		return 0, fmt.Errorf("read cancel answer: %w", err)
	}
	rep, err := wire.DecodeCancelReply(body)
	if err != nil || rep.ID != id {
		return 0, fmt.Errorf("bad cancel answer for %d: %w", id, wire.ErrMalformed)
	}
	return rep.Result, nil
}
