package edge

import (
	"time"

	"github.com/salt-broker/salt-broker/internal/saltmsg"
)

// queueBudget is how much longer r is of use when it is sent now: its class's max
// age (the policy dropByClassLocked applies here) minus the age it already has. The core
// only forwards bytes, so the edge tells it (wire.Request.MaxQueueAge); a request
// still waiting at the core for a slot at the master after that is refused as
// stale, so the class policy holds at both ends whatever the master does. Never
// less than 1 ms: zero on the wire means "no budget given".
func (e *Edge) queueBudget(r *edgeReq, now time.Time) time.Duration {
	limit := e.cfg.RequestMaxAge
	if r.env.Class == saltmsg.ClassAuth {
		limit = e.cfg.AuthMaxAge
	}
	return max(limit-now.Sub(r.created), time.Millisecond)
}
