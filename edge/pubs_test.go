package edge

import (
	"context"
	"errors"
	"testing"

	"github.com/salt-broker/salt-broker/internal/wire"
)

// The publication stream re-publishes in order from the cursor: what is at or
// below it is a duplicate and dropped, a jump in the sequence counts the
// publications missed, and the cursor follows what was re-published.
func TestRunPubsDropsDuplicatesAndCountsJumps(t *testing.T) {
	e := connTestEdge(t)
	s := newFakeSession(t, connTestLimit)
	c := testConn(e, s, 0)
	t.Cleanup(func() { c.cancel(errors.New("test over")) })
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		c.runPubs()
	}()

	st := s.take(t)
	rd := wire.NewReader(st, 1<<20)
	body, err := rd.Expect(wire.TSubscribe)
	if err != nil {
		t.Fatalf("core: read subscribe: %v", err)
	}
	if sub, err := wire.DecodeSubscribe(body); err != nil || sub != (wire.Subscribe{}) {
		t.Fatalf("a fresh edge subscribed with %+v (%v), want from nothing", sub, err)
	}
	const epoch = 7
	records := wire.Append(nil, wire.TSubscribe, wire.Subscribe{CoreEpoch: epoch, Cursor: 10}.Encode())
	for _, seq := range []uint64{10, 9, 11, 14} { // at the cursor, below it, next, a jump over 12 and 13
		records = wire.Append(records, wire.TPub, wire.Pub{Seq: seq, Frames: [][]byte{[]byte("job")}}.Encode())
	}
	if _, err := st.Write(records); err != nil {
		t.Fatalf("core: write publications: %v", err)
	}
	// The end of the stream ends runPubs once it has read every record before it.
	_ = st.CloseWrite()
	<-ended

	if got := counterOf(t, e.metrics.pubDuplicates); got != 2 {
		t.Errorf("publication duplicates = %v, want 2 (seq 10 at the cursor, 9 below it)", got)
	}
	if got := counterOf(t, e.metrics.pubs); got != 2 {
		t.Errorf("publications re-published = %v, want 2 (11 and 14)", got)
	}
	if got := counterOf(t, e.metrics.gapPubs); got != 2 {
		t.Errorf("publication gap = %v, want 2 (12 and 13 never came)", got)
	}
	if ep, cur := e.cursor.get(); ep != epoch || cur != 14 {
		t.Errorf("cursor at epoch %d seq %d, want %d and 14", ep, cur, epoch)
	}
	if cause := context.Cause(c.ctx); cause == nil {
		t.Error("the stream's end did not end the connection")
	}
}
