package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/salt-broker/salt-broker/internal/zmtp"
)

const stateFile = "edge-state.json"

const (
	// replayHoldPoll is how often the replay hold looks whether the minions came
	// back: often enough that the hold ends within a tenth of a second of it.
	replayHoldPoll = 100 * time.Millisecond
	// cursorSaveEvery bounds how many publications a crash re-delivers: a cursor
	// at most this old is on disk, and a write five times a second costs nothing.
	cursorSaveEvery = 200 * time.Millisecond
)

// cursorState is the edge's place in the core's publication stream, optionally kept
// in a small state file so a restarted edge resumes instead of skipping what it missed.
type cursorState struct {
	dir string

	mu        sync.Mutex
	epoch     uint64 // the core epoch the cursor refers to
	cursor    uint64 // last sequence re-published to minions
	saved     persisted
	restored  bool // loaded from a previous run: hold the replay until minions are back
	minionsAt int  // PUB peers when last saved: how many to wait for after a restart
}

type persisted struct {
	CoreEpoch uint64 `json:"core_epoch"`
	Cursor    uint64 `json:"pub_cursor"`
	Minions   int    `json:"pub_peers"`
}

func loadCursor(dir string) (*cursorState, error) {
	cs := &cursorState{dir: dir}
	if dir == "" {
		return cs, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return cs, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read edge state: %w", err)
	}
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		// A torn or foreign file must not stop the edge: start fresh, and say so.
		slog.Default().Warn("edge state file unreadable; starting without a publication cursor", "file", filepath.Join(dir, stateFile), "err", err)
		return cs, nil
	}
	cs.epoch, cs.cursor, cs.saved, cs.minionsAt = p.CoreEpoch, p.Cursor, p, p.Minions
	cs.restored = p.CoreEpoch != 0
	return cs, nil
}

func (cs *cursorState) get() (epoch, cursor uint64) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.epoch, cs.cursor
}

func (cs *cursorState) set(epoch, cursor uint64) {
	cs.mu.Lock()
	cs.epoch, cs.cursor = epoch, cursor
	cs.mu.Unlock()
}

func (cs *cursorState) setCursor(cursor uint64) {
	cs.mu.Lock()
	cs.cursor = cursor
	cs.mu.Unlock()
}

// waitForMinions holds the first replay after a restart until as many minions as
// before have re-subscribed (libzmq reconnects them within 1–11 s), or hold expires:
// a publication replayed before its minion is back would be dropped by the PUB.
func (cs *cursorState) waitForMinions(ctx context.Context, pub *zmtp.Pub, hold time.Duration, log *slog.Logger) bool {
	cs.mu.Lock()
	restored, want := cs.restored, cs.minionsAt
	cs.restored = false
	cs.mu.Unlock()
	if !restored || want == 0 {
		return ctx.Err() == nil
	}
	deadline := time.Now().Add(hold)
	t := time.NewTicker(replayHoldPoll)
	defer t.Stop()
	for {
		have := int(pub.Stats().Peers)
		if have >= want || time.Now().After(deadline) {
			log.Info("replaying publications after restart", "minions_subscribed", have, "minions_before", want)
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// save writes the cursor and the number of minions subscribed now.
func (cs *cursorState) save(minions int) error {
	if cs.dir == "" {
		return nil
	}
	cs.mu.Lock()
	p := persisted{CoreEpoch: cs.epoch, Cursor: cs.cursor, Minions: minions}
	if p == cs.saved || p.CoreEpoch == 0 {
		cs.mu.Unlock()
		return nil
	}
	cs.mu.Unlock()
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	tmp := filepath.Join(cs.dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write edge state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(cs.dir, stateFile)); err != nil {
		return fmt.Errorf("write edge state: %w", err)
	}
	cs.mu.Lock()
	cs.saved = p
	cs.mu.Unlock()
	return nil
}

// saveLoop writes the cursor every 200 ms while it changes: after a kill -9 the edge
// re-publishes at most what it published in the last 200 ms (DESIGN §3.6, docs/guarantees.md).
func (cs *cursorState) saveLoop(ctx context.Context, log *slog.Logger, pub *zmtp.Pub) {
	if cs.dir == "" {
		return
	}
	t := time.NewTicker(cursorSaveEvery)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := cs.save(int(pub.Stats().Peers)); err != nil {
			if !failing {
				log.Error("saving the publication cursor failed; check --state-dir", "err", err)
			}
			failing = true
		} else {
			failing = false
		}
	}
}
