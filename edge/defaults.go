package edge

// DefaultMaxMinions is the connections accepted on each minion port (cmd/broker's
// --max-minions, the edge's ZMTP.MaxPeers). 10,000 minions hold 10,000 on each
// port; twice that leaves room for reconnects that overlap the old connection.
const DefaultMaxMinions = 20_000
