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

// A gap and a publication too large for this edge both move the cursor past what
// they name, so what the core sends again at or below it afterwards is dropped as
// a duplicate and the next one is re-published.
func TestRunPubsGapAndOversizedMoveCursor(t *testing.T) {
	e := connTestEdge(t)
	e.cfg.MaxMessageSize = 1 << 10
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
	if _, err := rd.Expect(wire.TSubscribe); err != nil {
		t.Fatalf("core: read subscribe: %v", err)
	}
	pub := func(b []byte, seq uint64, size int) []byte {
		return wire.Append(b, wire.TPub, wire.Pub{Seq: seq, Frames: [][]byte{make([]byte, size)}}.Encode())
	}
	records := wire.Append(nil, wire.TSubscribe, wire.Subscribe{CoreEpoch: 3, Cursor: 10}.Encode())
	records = wire.Append(records, wire.TGap, wire.Gap{From: 11, To: 20}.Encode())
	records = pub(records, 20, 3)                                    // at the gap's end: a duplicate
	records = pub(records, 21, e.cfg.MaxMessageSize+wire.FrameSlack) // skipped, too large
	records = pub(records, 21, 3)                                    // at the skipped one: a duplicate
	records = pub(records, 22, 3)                                    // next: re-published
	if _, err := st.Write(records); err != nil {
		t.Fatalf("core: write publications: %v", err)
	}
	_ = st.CloseWrite()
	<-ended

	if got := counterOf(t, e.metrics.pubDuplicates); got != 2 {
		t.Errorf("publication duplicates = %v, want 2 (20 after the gap, 21 after it was skipped)", got)
	}
	if got := counterOf(t, e.metrics.pubs); got != 1 {
		t.Errorf("publications re-published = %v, want 1 (22)", got)
	}
	if got := counterOf(t, e.metrics.gapPubs); got != 11 {
		t.Errorf("publication gap = %v, want 11 (10 in the gap, 1 too large)", got)
	}
	if ep, cur := e.cursor.get(); ep != 3 || cur != 22 {
		t.Errorf("cursor at epoch %d seq %d, want 3 and 22", ep, cur)
	}
}
