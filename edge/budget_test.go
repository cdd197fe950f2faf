package edge

import (
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/internal/saltmsg"
)

// The budget the edge gives the core is what its class policy still allows.
func TestQueueBudgetFollowsTheClassPolicy(t *testing.T) {
	e := &Edge{cfg: Config{AuthMaxAge: 30 * time.Second, RequestMaxAge: 15 * time.Minute}}
	now := time.Unix(1000, 0)
	for _, c := range []struct {
		class saltmsg.Class
		age   time.Duration
		want  time.Duration
	}{
		{saltmsg.ClassAuth, 0, 30 * time.Second},
		{saltmsg.ClassAuth, 10 * time.Second, 20 * time.Second},
		{saltmsg.ClassAuth, time.Minute, time.Millisecond}, // past it: the least there is, never "none"
		{saltmsg.ClassAES, 5 * time.Minute, 10 * time.Minute},
		{saltmsg.ClassAES, time.Hour, time.Millisecond},
	} {
		r := &edgeReq{created: now.Add(-c.age), env: saltmsg.Envelope{Class: c.class}}
		if got := e.queueBudget(r, now); got != c.want {
			t.Errorf("%v aged %v: budget %v, want %v", c.class, c.age, got, c.want)
		}
	}
}
