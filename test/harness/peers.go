package harness

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// MasterOpts configures a Salt-like master (test/peers/master.py).
type MasterOpts struct {
	IP      string // bind address; default 127.0.0.1
	PubPort int    // 0: the master picks a free port and reports it
	RetPort int    // 0: the master picks a free port and reports it
	Workers int    // REP workers behind the ROUTER; default 8
	PubHWM  int    // PUB send HWM; default 1000 (Salt's pub_hwm)
	Wrap    func(*exec.Cmd) *exec.Cmd
	Args    []string // extra arguments
}

// Master is a running master peer. PubPort and RetPort are the bound ports.
type Master struct {
	*Proc
	IP      string
	PubPort int
	RetPort int
}

// StartMaster starts a master and waits until both sockets are bound.
func StartMaster(t testing.TB, o MasterOpts) *Master {
	t.Helper()
	if o.IP == "" {
		o.IP = "127.0.0.1"
	}
	args := []string{
		"--pub", fmt.Sprintf("tcp://%s:%d", o.IP, o.PubPort),
		"--ret", fmt.Sprintf("tcp://%s:%d", o.IP, o.RetPort),
	}
	if o.Workers > 0 {
		args = append(args, "--workers", strconv.Itoa(o.Workers))
	}
	if o.PubHWM > 0 {
		args = append(args, "--pub-hwm", strconv.Itoa(o.PubHWM))
	}
	args = append(args, o.Args...)
	p := Start(t, "master", pyCmd(t, "master.py", args, o.Wrap))
	ev := waitReady(t, p)
	return &Master{Proc: p, IP: o.IP, PubPort: intOf(ev["pub_port"]), RetPort: intOf(ev["ret_port"])}
}

// PublishOpts is one publish command.
type PublishOpts struct {
	Count int
	Rate  float64 // messages/s; 0 = as fast as possible
	Size  int     // approximate payload bytes
	// Topics nil: single-frame publications. Otherwise [topic, payload]
	// multipart, cycling through Topics ("broadcast", TopicFor(id), ...).
	Topics     []string
	StartSeq   uint64            // 0: continue the master's sequence
	TopicStart map[string]uint64 // per-topic sequence restarts (rarely needed)
	Warmup     bool              // marked messages minions count apart, seq 0
}

// PublishResult reports a finished publish command.
type PublishResult struct {
	Count     int     `json:"count"`
	FirstSeq  uint64  `json:"first_seq"`
	LastSeq   uint64  `json:"last_seq"`
	Warmup    bool    `json:"warmup"`
	Cancelled bool    `json:"cancelled"`
	ElapsedMS float64 `json:"elapsed_ms"`
}

func (o PublishOpts) cmd() map[string]any {
	c := map[string]any{"cmd": "publish", "count": o.Count, "rate": o.Rate, "size": o.Size, "warmup": o.Warmup}
	if o.Topics != nil {
		c["topics"] = o.Topics
	}
	if o.StartSeq > 0 {
		c["start_seq"] = o.StartSeq
	}
	if o.TopicStart != nil {
		c["topic_start"] = o.TopicStart
	}
	return c
}

// Publish publishes and waits until the master has handed every message to
// its PUB socket (not until minions received them).
func (m *Master) Publish(ctx context.Context, o PublishOpts) (PublishResult, error) {
	var r PublishResult
	ev, err := m.Call(ctx, o.cmd(), "published")
	if err != nil {
		return r, err
	}
	return r, decode(ev, &r)
}

// PublishAsync starts a publish and returns its tag for WaitPublished, so a
// test can break links while the master is publishing.
func (m *Master) PublishAsync(o PublishOpts) (string, error) {
	tag := nextTag()
	c := o.cmd()
	c["tag"] = tag
	return tag, m.Send(c)
}

// WaitPublished waits for the publish started by PublishAsync with tag.
func (m *Master) WaitPublished(ctx context.Context, tag string) (PublishResult, error) {
	var r PublishResult
	ev, err := m.WaitMatch(ctx, "published", func(ev map[string]any) bool { return ev["tag"] == tag })
	if err != nil {
		return r, err
	}
	return r, decode(ev, &r)
}

// CancelPublish stops the running publish (its "published" event reports
// cancelled and the count actually sent).
func (m *Master) CancelPublish() error { return m.Send(map[string]any{"cmd": "cancel"}) }

// ReplyPolicy makes the master hold back replies to provoke minion retries.
type ReplyPolicy struct {
	Delay time.Duration // hold replies this long (0 and !Drop: normal replies)
	Tries int           // apply only to the first Tries tries of each rid; 0 = every try
	Drop  bool          // drop instead of delay
}

// SetReplyPolicy changes how the master treats replies from now on.
func (m *Master) SetReplyPolicy(ctx context.Context, p ReplyPolicy) error {
	_, err := m.Call(ctx, map[string]any{
		"cmd": "config", "reply_delay_ms": float64(p.Delay) / float64(time.Millisecond), "tries": p.Tries, "drop": p.Drop,
	}, "config")
	return err
}

// MasterStats mirrors the master's stats event.
type MasterStats struct {
	Requests       int64         `json:"requests"`    // requests seen by the ROUTER (bad included)
	AES            int64         `json:"aes"`         // enc: aes requests
	Auth           int64         `json:"auth"`        // enc: clear _auth requests
	Bad            int64         `json:"bad"`         // unparseable or malformed envelope
	Depth          map[int]int64 `json:"depth"`       // frames before the empty delimiter -> count
	UniqueRIDs     int64         `json:"unique_rids"` // distinct request ids
	RIDOverflow    int64         `json:"rid_overflow"`
	DupRIDs        int64         `json:"dup_rids"`         // requests whose rid was seen before
	DupNewIdentity int64         `json:"dup_new_identity"` // ... arriving with another routing identity
	DupNewNonce    int64         `json:"dup_new_nonce"`    // ... with another nonce
	DupSameLength  int64         `json:"dup_same_length"`  // ... with the same byte length
	DupExamples    []string      `json:"dup_examples"`     // the first 10 duplicated rids
	Replies        int64         `json:"replies"`
	ReplyBytes     int64         `json:"reply_bytes"`
	RequestBytes   int64         `json:"request_bytes"`
	Delayed        int64         `json:"delayed"`
	Dropped        int64         `json:"dropped"`
	Published      int64         `json:"published"`
	Warmups        int64         `json:"warmups"`
	LastSeq        uint64        `json:"last_seq"`
	Publishing     bool          `json:"publishing"`
}

// Stats asks the master for its counters.
func (m *Master) Stats(ctx context.Context) (MasterStats, error) {
	var s MasterStats
	ev, err := m.Call(ctx, map[string]any{"cmd": "stats"}, "stats")
	if err != nil {
		return s, err
	}
	return s, decode(ev, &s)
}

// ResetStats zeroes the request counters (the publish sequence continues).
func (m *Master) ResetStats(ctx context.Context) error {
	_, err := m.Call(ctx, map[string]any{"cmd": "reset"}, "reset")
	return err
}

// MinionOpts configures N minions in one process (test/peers/minions.py).
type MinionOpts struct {
	Master           string // address minions use as `master`; default 127.0.0.1
	PubPort, RetPort int
	Count            int    // default 1
	IDPrefix         string // ids are IDPrefix0..IDPrefix{N-1}; default "m"
	Filtering        bool   // subscribe "broadcast" + sha1(id) instead of ""
	ReturnOnPublish  bool   // every publication triggers one return request
	ReturnSize       int    // request bytes of those returns; default 500
	ReturnReplySize  int    // reply bytes of those returns; default 99
	// Request timeout, random in [Min, Max] per request like Salt's
	// return_retry_timer; default 5-10 s.
	ReturnTimeoutMin, ReturnTimeoutMax time.Duration
	Tries                              int // default 3
	// JobTime: a return is sent this long after its publication arrived, random
	// in [Min, Max] per job (the job's run time); 0: at once.
	JobTimeMin, JobTimeMax time.Duration
	// LateClose keeps a timed-out REQ socket open this long after the retry went out
	// on a new one, as a Salt 3007 minion was seen to; 0: closed at once.
	LateClose          time.Duration
	ReconnectIvl       time.Duration
	ReconnectIvlMax    time.Duration
	ReconnectRandomize bool // Salt's recon_randomize
	Wrap               func(*exec.Cmd) *exec.Cmd
	Args               []string
}

// Minions is a running minions peer.
type Minions struct {
	*Proc
	Opts MinionOpts
}

// StartMinions starts the minions and waits until their sockets are
// connecting. A SUB may still miss the first publications: use WarmUp.
func StartMinions(t testing.TB, o MinionOpts) *Minions {
	t.Helper()
	if o.Master == "" {
		o.Master = "127.0.0.1"
	}
	if o.Count == 0 {
		o.Count = 1
	}
	if o.IDPrefix == "" {
		o.IDPrefix = "m"
	}
	args := []string{
		"--master", o.Master, "--pub-port", strconv.Itoa(o.PubPort), "--ret-port", strconv.Itoa(o.RetPort),
		"--count", strconv.Itoa(o.Count), "--id-prefix", o.IDPrefix,
	}
	if o.Filtering {
		args = append(args, "--filtering")
	}
	if o.ReturnOnPublish {
		args = append(args, "--return-on-publish")
	}
	if o.ReturnSize > 0 {
		args = append(args, "--return-size", strconv.Itoa(o.ReturnSize))
	}
	if o.ReturnReplySize > 0 {
		args = append(args, "--return-reply-size", strconv.Itoa(o.ReturnReplySize))
	}
	if o.ReturnTimeoutMin > 0 {
		hi := o.ReturnTimeoutMax
		if hi < o.ReturnTimeoutMin {
			hi = o.ReturnTimeoutMin
		}
		args = append(args, "--return-timeout", fmt.Sprintf("%g-%g", o.ReturnTimeoutMin.Seconds(), hi.Seconds()))
	}
	if o.Tries > 0 {
		args = append(args, "--tries", strconv.Itoa(o.Tries))
	}
	if o.LateClose > 0 {
		args = append(args, "--late-close", fmt.Sprintf("%g", o.LateClose.Seconds()))
	}
	if o.JobTimeMax > 0 {
		args = append(args, "--job-time", fmt.Sprintf("%g-%g", o.JobTimeMin.Seconds(), o.JobTimeMax.Seconds()))
	}
	if o.ReconnectIvl > 0 {
		args = append(args, "--recon-default", strconv.FormatInt(o.ReconnectIvl.Milliseconds(), 10))
	}
	if o.ReconnectIvlMax > 0 {
		args = append(args, "--recon-max", strconv.FormatInt(o.ReconnectIvlMax.Milliseconds(), 10))
	}
	if o.ReconnectRandomize {
		args = append(args, "--recon-randomize")
	}
	args = append(args, o.Args...)
	p := Start(t, "minions-"+o.IDPrefix, pyCmd(t, "minions.py", args, o.Wrap))
	waitReady(t, p)
	return &Minions{Proc: p, Opts: o}
}

// ID is the id of minion i.
func (m *Minions) ID(i int) string { return m.Opts.IDPrefix + strconv.Itoa(i) }

// TopicFor is the topic a Salt master with zmq_filtering uses for one minion.
func TopicFor(id string) string {
	h := sha1.Sum([]byte(id))
	return hex.EncodeToString(h[:])
}

// RequestOpts is one request command: every minion sends Count requests one
// after another, all minions at once (at most Concurrency in flight overall).
type RequestOpts struct {
	Count       int
	Size        int           // request bytes (approximate)
	ReplySize   int           // exact reply bytes the master must send back
	Concurrency int           // 0: every minion at once
	Kind        string        // "aes" (default) or "auth"
	Tries       int           // 0: the minions' --tries
	Timeout     time.Duration // per try; 0: the minions' --return-timeout range
}

// RequestResult reports a finished request command.
type RequestResult struct {
	Total      int     `json:"total"`
	OK         int     `json:"ok"`
	Failed     int     `json:"failed"`
	Retried    int     `json:"retried"`
	WrongReply int     `json:"wrong_reply"`
	ElapsedMS  float64 `json:"elapsed_ms"`
}

func (o RequestOpts) cmd() map[string]any {
	c := map[string]any{
		"cmd": "request", "count": o.Count, "size": o.Size, "reply_size": o.ReplySize, "concurrency": o.Concurrency,
	}
	if o.Kind != "" {
		c["kind"] = o.Kind
	}
	if o.Tries > 0 {
		c["tries"] = o.Tries
	}
	if o.Timeout > 0 {
		c["timeout_ms"] = o.Timeout.Milliseconds()
	}
	return c
}

// Request runs one request command and waits for all its requests to end.
func (m *Minions) Request(ctx context.Context, o RequestOpts) (RequestResult, error) {
	var r RequestResult
	ev, err := m.Call(ctx, o.cmd(), "request_done")
	if err != nil {
		return r, err
	}
	return r, decode(ev, &r)
}

// RequestAsync starts a request command and returns its tag for WaitRequest, so a
// benchmark can sample the minions' stats while the requests run.
func (m *Minions) RequestAsync(o RequestOpts) (string, error) {
	tag := nextTag()
	c := o.cmd()
	c["tag"] = tag
	return tag, m.Send(c)
}

// WaitRequest waits for the request command started by RequestAsync with tag to end.
func (m *Minions) WaitRequest(ctx context.Context, tag string) (RequestResult, error) {
	var r RequestResult
	ev, err := m.WaitMatch(ctx, "request_done", func(ev map[string]any) bool { return ev["tag"] == tag })
	if err != nil {
		return r, err
	}
	return r, decode(ev, &r)
}

// LatencySamples are the minions' latency samples in ms, sorted; Rank[i] is the
// 0-based rank of MS[i] among Count samples (all of them unless thinned).
type LatencySamples struct {
	Count    int       `json:"count"`
	Overflow int64     `json:"overflow"` // samples not kept (over the minions' bound)
	MS       []float64 `json:"ms"`
	Rank     []int     `json:"rank"`
}

// Latencies returns the minions' latency samples: of returns (from the publication's
// arrival, as ReturnLatencyMS) or of every request (from its first send, as
// LatencyMS); points > 0 thins them to at most that many, evenly spaced in rank.
func (m *Minions) Latencies(ctx context.Context, returns bool, points int) (LatencySamples, error) {
	var s LatencySamples
	which := "request"
	if returns {
		which = "return"
	}
	ev, err := m.Call(ctx, map[string]any{"cmd": "latencies", "which": which, "points": points}, "latencies")
	if err != nil {
		return s, err
	}
	return s, decode(ev, &s)
}

// MinionSummary mirrors one minion's entry in the stats event.
type MinionSummary struct {
	ID           string  `json:"id"`
	Pubs         int64   `json:"pubs"`          // publications received (warm-ups excluded)
	Warmups      int64   `json:"warmups"`       // warm-up publications received
	Missing      int64   `json:"missing"`       // gaps in a topic's sequence not filled later
	OutOfOrder   int64   `json:"out_of_order"`  // arrived after a later one
	Dup          int64   `json:"dup"`           // same topic sequence twice
	BadMultipart int64   `json:"bad_multipart"` // wrong frame count, or topic and payload not matching
	Foreign      int64   `json:"foreign"`       // topics this minion did not subscribe to
	FirstSeq     uint64  `json:"first_seq"`
	LastSeq      uint64  `json:"last_seq"`
	ReqOK        int64   `json:"req_ok"`
	ReqFailed    int64   `json:"req_failed"`
	ReqRetried   int64   `json:"req_retried"` // retries (tries after the first)
	WrongReply   int64   `json:"wrong_reply"` // reply not matching the current try's rid/nonce/size
	QueueDropped int64   `json:"queue_dropped"`
	Returns      int64   `json:"returns"` // return requests triggered by publications
	Pending      int64   `json:"pending"`
	LatencyMaxMS float64 `json:"latency_max_ms"`
}

// Latency is the request latency distribution (first try to good reply).
type Latency struct {
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
	Count int64   `json:"count"`
}

// MinionStats mirrors the minions' stats event: sums over all minions plus
// (unless brief) each minion's summary.
type MinionStats struct {
	Minions         int     `json:"minions"`
	WarmMinions     int     `json:"warm_minions"` // minions that received a warm-up
	Pubs            int64   `json:"pubs"`
	Warmups         int64   `json:"warmups"`
	Missing         int64   `json:"missing"`
	OutOfOrder      int64   `json:"out_of_order"`
	Dup             int64   `json:"dup"`
	BadMultipart    int64   `json:"bad_multipart"`
	Foreign         int64   `json:"foreign"`
	ReqOK           int64   `json:"req_ok"`
	ReqFailed       int64   `json:"req_failed"`
	ReqRetried      int64   `json:"req_retried"`
	WrongReply      int64   `json:"wrong_reply"`
	QueueDropped    int64   `json:"queue_dropped"`
	Returns         int64   `json:"returns"`
	Pending         int64   `json:"pending"`
	Inflight        int64   `json:"inflight"`
	LatencyMS       Latency `json:"latency_ms"`
	LatencyOverflow int64   `json:"latency_overflow"`
	// ReturnLatencyMS: returns only, from the publication's arrival to the good
	// reply, time queued behind the minion's earlier returns and every try included.
	ReturnLatencyMS Latency         `json:"return_latency_ms"`
	Recovery        *Recovery       `json:"recovery"` // StatsSince only
	PerMinion       []MinionSummary `json:"per_minion"`
}

// Recovery says how soon publications reached minions after a moment (a link
// coming back): the first minion, and the last of those that got any.
type Recovery struct {
	FirstMS float64 `json:"first_ms"` // -1: none arrived since
	AllMS   float64 `json:"all_ms"`
	Minions int     `json:"minions"` // minions that received one since
}

// Stats asks for every minion's counters.
func (m *Minions) Stats(ctx context.Context) (MinionStats, error) { return m.stats(ctx, false) }

// BriefStats is Stats without the per-minion list.
func (m *Minions) BriefStats(ctx context.Context) (MinionStats, error) { return m.stats(ctx, true) }

// StatsSince is BriefStats plus Recovery: the first publication arrivals at or
// after since (the peers share this machine's clock).
func (m *Minions) StatsSince(ctx context.Context, since time.Time) (MinionStats, error) {
	return m.statsCmd(ctx, map[string]any{"cmd": "stats", "brief": true, "since": float64(since.UnixNano()) / 1e9})
}

func (m *Minions) stats(ctx context.Context, brief bool) (MinionStats, error) {
	return m.statsCmd(ctx, map[string]any{"cmd": "stats", "brief": brief})
}

func (m *Minions) statsCmd(ctx context.Context, cmd map[string]any) (MinionStats, error) {
	var s MinionStats
	ev, err := m.Call(ctx, cmd, "stats")
	if err != nil {
		return s, err
	}
	return s, decode(ev, &s)
}

// Settle waits until every return the minions queued has ended (answered, or given
// up after the last try) and either every minion holds want distinct publications
// or, with quiet > 0, nothing has changed for quiet (a run that lost publications).
// It returns the last stats it saw, with ctx's error if ctx ended first.
func (m *Minions) Settle(ctx context.Context, want int64, quiet time.Duration) (MinionStats, error) {
	var last MinionStats
	changed := time.Now()
	for {
		st, err := m.BriefStats(ctx)
		if err != nil {
			return last, err
		}
		if st.Pubs != last.Pubs || st.ReqOK != last.ReqOK || st.ReqFailed != last.ReqFailed || st.Pending != 0 {
			changed = time.Now()
		}
		last = st
		ended := st.Pending == 0 && st.ReqOK+st.ReqFailed >= st.Returns
		if ended && (st.Pubs-st.Dup >= int64(st.Minions)*want || quiet > 0 && time.Since(changed) >= quiet) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("minions not settled: %w", context.Cause(ctx))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ResetStats zeroes every minion's counters and sequence tracking.
func (m *Minions) ResetStats(ctx context.Context) error {
	_, err := m.Call(ctx, map[string]any{"cmd": "reset"}, "reset")
	return err
}

// WarmUp publishes marked "broadcast" warm-up messages every interval until
// every minion of every group has received one, i.e. every SUB is connected
// and subscribed (all of a minion's subscriptions travel together).
func WarmUp(ctx context.Context, m *Master, groups ...*Minions) error {
	const interval = 50 * time.Millisecond
	for {
		if _, err := m.Publish(ctx, PublishOpts{Count: 1, Topics: []string{"broadcast"}, Warmup: true}); err != nil {
			return fmt.Errorf("warm-up publish: %w", err)
		}
		timer := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("warm-up: %w", context.Cause(ctx))
		case <-timer.C:
		}
		all := true
		for _, g := range groups {
			s, err := g.BriefStats(ctx)
			if err != nil {
				return fmt.Errorf("warm-up stats: %w", err)
			}
			if s.WarmMinions < s.Minions {
				all = false
				break
			}
		}
		if all {
			return nil
		}
	}
}

// ForwarderOpts configures the old salt-broker pattern (forwarder.py).
type ForwarderOpts struct {
	Master           string // master address; default 127.0.0.1
	PubPort, RetPort int    // the master's ports
	Bind             string // address minions use as master
	BindPubPort      int    // default PubPort
	BindRetPort      int    // default RetPort
	Wrap             func(*exec.Cmd) *exec.Cmd
	Args             []string
}

// StartForwarder starts a forwarder and waits until it has bound.
func StartForwarder(t testing.TB, o ForwarderOpts) *Proc {
	t.Helper()
	if o.Master == "" {
		o.Master = "127.0.0.1"
	}
	args := []string{
		"--master", o.Master, "--pub-port", strconv.Itoa(o.PubPort), "--ret-port", strconv.Itoa(o.RetPort),
		"--bind", o.Bind,
	}
	if o.BindPubPort > 0 {
		args = append(args, "--bind-pub-port", strconv.Itoa(o.BindPubPort))
	}
	if o.BindRetPort > 0 {
		args = append(args, "--bind-ret-port", strconv.Itoa(o.BindRetPort))
	}
	args = append(args, o.Args...)
	p := Start(t, "forwarder", pyCmd(t, "forwarder.py", args, o.Wrap))
	waitReady(t, p)
	return p
}

func decode(ev map[string]any, v any) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("re-encode %v event: %w", ev["event"], err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %v event: %w", ev["event"], err)
	}
	return nil
}

func intOf(v any) int {
	f, _ := v.(float64)
	return int(f)
}
