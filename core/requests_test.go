package core

import (
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
)

func newTestTable() *table {
	return newTable(TableLimits{Entries: 4, ReplyBytes: 100, TTL: time.Minute})
}

func TestTableSendsEachIDToTheMasterOnce(t *testing.T) {
	tb := newTestTable()
	key := reqKey{1, 1}
	p, dup, busy := tb.submit(key, frames("req"))
	if dup || busy {
		t.Fatal("first submit")
	}
	if !tb.take(<-tb.queue) {
		t.Fatal("take")
	}
	again, dup, _ := tb.submit(key, frames("req"))
	if !dup || again != p || len(tb.queue) != 0 {
		t.Fatal("a re-sent ID must join the first, not reach the master again")
	}
	if !tb.complete(p.ticket, frames("rep")) {
		t.Fatal("complete")
	}
	<-again.done
	reply, ref := tb.result(again)
	if ref != nil || string(reply[0]) != "rep" {
		t.Fatalf("reply %q refusal %+v", reply, ref)
	}
	if tb.complete(p.ticket, frames("rep")) {
		t.Fatal("a second reply for one ticket must be dropped")
	}
}

func TestTableCancel(t *testing.T) {
	tb := newTestTable()
	queued, _, _ := tb.submit(reqKey{1, 1}, frames("a"))
	if got := tb.cancel(reqKey{1, 1}); got != wire.CancelDone {
		t.Fatalf("cancel queued: %d", got)
	}
	if tb.take(<-tb.queue) {
		t.Fatal("a cancelled request must not reach the master")
	}
	if _, ref := tb.result(queued); ref == nil || ref.Code != wire.RefusedCancelled {
		t.Fatal("cancelled request must be refused")
	}
	// Unknown: a tombstone, so a late copy never reaches the master either.
	if got := tb.cancel(reqKey{1, 2}); got != wire.CancelDone {
		t.Fatalf("cancel unknown: %d", got)
	}
	late, dup, _ := tb.submit(reqKey{1, 2}, frames("late"))
	if !dup || late.state != stateRefused {
		t.Fatal("late copy of a cancelled request must be refused")
	}
	sent, _, _ := tb.submit(reqKey{1, 3}, frames("b"))
	tb.take(<-tb.queue)
	if got := tb.cancel(reqKey{1, 3}); got != wire.CancelAtMaster {
		t.Fatalf("cancel at master: %d", got)
	}
	_ = sent
}

func TestTableBoundsAndTimeouts(t *testing.T) {
	tb := newTestTable()
	now := time.Unix(0, 0)
	tb.now = func() time.Time { return now }
	for i := uint64(1); i <= 4; i++ {
		tb.submit(reqKey{1, i}, frames("x"))
	}
	if _, _, busy := tb.submit(reqKey{1, 9}, frames("x")); !busy {
		t.Fatal("a full table must refuse")
	}
	p := <-tb.queue
	tb.take(p)
	now = now.Add(2 * time.Second)
	if n := tb.sweep(time.Second); n != 1 {
		t.Fatalf("timed out %d, want 1", n)
	}
	if _, ref := tb.result(p); ref == nil || ref.Code != wire.RefusedTimeout {
		t.Fatal("timed-out request must be refused")
	}
	now = now.Add(2 * time.Minute)
	tb.sweep(time.Second)
	if _, n, _, _ := tb.snapshot(); n != 3 { // the 3 still queued stay; the refused one expired
		t.Fatalf("entries after TTL: %d", n)
	}
}

func TestTableEvictsRepliesOverByteBound(t *testing.T) {
	tb := newTestTable()
	var ps []*pending
	for i := uint64(1); i <= 3; i++ {
		p, _, _ := tb.submit(reqKey{1, i}, frames("x"))
		tb.take(<-tb.queue)
		ps = append(ps, p)
	}
	big := [][]byte{make([]byte, 60)}
	tb.complete(ps[0].ticket, big)
	tb.complete(ps[1].ticket, big) // 120 > 100: the oldest reply goes
	if _, ref := tb.result(ps[0]); ref == nil {
		t.Fatal("oldest cached reply should have been evicted")
	}
	if r, _ := tb.result(ps[1]); r == nil {
		t.Fatal("newest cached reply should stay")
	}
	tb.delivered(ps[1].key)
	if _, _, _, b := tb.snapshot(); b != 0 {
		t.Fatalf("reply bytes after delivery: %d", b)
	}
}

func TestTableFail(t *testing.T) {
	tb := newTestTable()
	p, _, _ := tb.submit(reqKey{1, 1}, frames("x"))
	tb.take(<-tb.queue)
	if !tb.fail(p.ticket, wire.RefusedTooLarge, "too large") {
		t.Fatal("fail")
	}
	if _, ref := tb.result(p); ref == nil || ref.Code != wire.RefusedTooLarge {
		t.Fatalf("refusal %+v", ref)
	}
	if tb.fail(p.ticket, wire.RefusedTooLarge, "again") || tb.complete(p.ticket, frames("late")) {
		t.Fatal("a failed ticket must take no further outcome")
	}
}
