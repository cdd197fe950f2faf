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
	return max(e.cfg.maxAge(r.env.Class)-now.Sub(r.created), time.Millisecond)
}

// maxAge is how long a request of class is of use: an auth request older than
// --auth-max-age is stale (its minion has retried already), any other one older
// than --request-max-age is dropped unsent.
func (c *Config) maxAge(class saltmsg.Class) time.Duration {
	if class == saltmsg.ClassAuth {
		return c.AuthMaxAge
	}
	return c.RequestMaxAge
}
