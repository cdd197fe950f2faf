package core

import (
	"strconv"

	"github.com/salt-broker/salt-broker/internal/setting"
)

// Validate checks every numeric and duration setting once, after Defaults, so a bad
// value stops the core at start with one line (a *setting.Error) instead of a panic
// (a negative --max-in-flight sized a channel) or a silent misbehaviour later.
// Settings cmd/broker exposes are named by their flag; the others by their Config
// field. One line per setting: add new ones here.
//
// DrainTimeout takes any value (< 0: no drain), so it has no line; cmd/broker
// refuses a negative flag itself, as 0 is how the operator turns the drain off.
func (c *Config) Validate() error {
	const f = "core.Config."
	return setting.First([]setting.Check{
		setting.Port("--master-pub-port", c.MasterPubPort),
		setting.Port("--master-ret-port", c.MasterRetPort),
		setting.Between("--max-message-size", c.MaxMessageSize, 1, setting.MaxMessageSize),
		setting.AtLeast("--ring-count", c.Ring.Count, 1),
		// A publication larger than the ring's byte bound evicts itself as it is
		// appended: no edge would ever get it.
		setting.If("--ring-bytes", c.Ring.Bytes, c.Ring.Bytes >= int64(c.MaxMessageSize),
			"must be at least --max-message-size ("+strconv.Itoa(c.MaxMessageSize)+"), or the largest publication could never be kept"),
		setting.Positive("--ring-age", c.Ring.Age),
		setting.AtLeast("--max-in-flight", c.MaxInFlight, 1),
		setting.Positive("--dedup-ttl", c.Table.TTL),
		setting.Positive("--write-timeout", c.WriteTimeout),
		setting.AtLeast("--bulk-in-flight-bytes", c.BulkInFlightBytes, 1), // a reply alone always passes

		setting.AtLeast(f+"Table.Entries", c.Table.Entries, 1),
		setting.AtLeast(f+"Table.ReplyBytes", c.Table.ReplyBytes, 1),
		// A reply is cached until its edge confirms it; one larger than the whole cache
		// is evicted as it arrives and could never be delivered.
		setting.If("--max-message-size", c.MaxMessageSize, int64(c.MaxMessageSize) <= c.Table.ReplyBytes,
			"must be at most the core's reply cache ("+strconv.FormatInt(c.Table.ReplyBytes, 10)+" bytes), or the largest reply could never be delivered"),
		setting.NotNegative(f+"Table.QueueBytes", c.Table.QueueBytes, "the default"), // a request alone always passes
		setting.Positive(f+"MasterTimeout", c.MasterTimeout),
	}, setting.Tunnel(f+"Tunnel", c.Tunnel))
}
