package edge

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
)

// runPubs resumes the publication stream from the edge's cursor and re-publishes
// every publication to the minions, in order. It keeps no cursor of its own: it is
// the cursor's only writer (pubLoop runs one stream at a time), so e.cursor is
// read where a decision needs it, and moved only after the publication went out, so
// the cursor saved for a restart never runs ahead of what the minions were sent.
func (c *conn) runPubs() {
	e := c.e
	if !e.cursor.waitForMinions(c.ctx, e.pub, e.cfg.ReplayHold, c.log) {
		return
	}
	st, err := c.sess.OpenStream(c.ctx)
	if err != nil {
		c.cancel(fmt.Errorf("open publication stream: %w", err))
		return
	}
	defer st.Close()
	stop := context.AfterFunc(c.ctx, func() { _ = st.Close() })
	defer stop()
	epoch, from := e.cursor.get()
	_ = st.SetWriteDeadline(time.Now().Add(e.cfg.WriteTimeout))
	if err := wire.Write(st, wire.TSubscribe, wire.Subscribe{CoreEpoch: epoch, Cursor: from}.Encode()); err != nil {
		c.cancel(fmt.Errorf("subscribe: %w", err))
		return
	}
	_ = st.SetWriteDeadline(time.Time{})
	rd := wire.NewReader(st, e.cfg.MaxMessageSize+wire.FrameSlack)
	for {
		typ, body, err := rd.Next()
		if errors.Is(err, wire.ErrTooLarge) && typ == wire.TPub {
			seq := wire.NewDecoder(body[:min(8, len(body))]).U64()
			c.log.Warn("publication skipped: larger than this edge's --max-message-size", "seq", seq, "err", err)
			e.metrics.gapPubs.Inc()
			if _, cursor := e.cursor.get(); seq > cursor {
				e.cursor.setCursor(seq)
			}
			continue
		}
		if err != nil {
			c.cancel(fmt.Errorf("publication stream: %w", err))
			return
		}
		switch typ {
		case wire.TSubscribe: // the core says where it starts
			s, err := wire.DecodeSubscribe(body)
			if err != nil {
				c.cancel(fmt.Errorf("decode subscribe answer: %w", err))
				return
			}
			e.cursor.set(s.CoreEpoch, s.Cursor)
		case wire.TPub:
			p, err := wire.DecodePub(body)
			if err != nil {
				c.cancel(fmt.Errorf("decode publication: %w", err))
				return
			}
			_, cursor := e.cursor.get()
			if p.Seq <= cursor {
				e.metrics.pubDuplicates.Inc()
				continue
			}
			if p.Seq != cursor+1 {
				c.log.Warn("publication sequence jumped", "expected", cursor+1, "got", p.Seq)
				e.metrics.gapPubs.Add(float64(p.Seq - cursor - 1))
			}
			e.pub.Publish(wire.CloneFrames(p.Frames))
			e.metrics.pubs.Inc()
			e.cursor.setCursor(p.Seq)
		case wire.TGap:
			g, err := wire.DecodeGap(body)
			if err != nil {
				c.cancel(fmt.Errorf("decode gap: %w", err))
				return
			}
			n := g.To - g.From + 1
			e.metrics.gapPubs.Add(float64(n))
			c.log.Warn("publications lost in an outage longer than the core's replay window; minions will miss these jobs",
				"from_seq", g.From, "to_seq", g.To, "count", n)
			e.cursor.setCursor(g.To)
		default:
			c.cancel(fmt.Errorf("unexpected %s on the publication stream: %w", typ, wire.ErrMalformed))
			return
		}
	}
}
