package zmtp

import (
	"log/slog"
	"time"
)

// Options bound and tune a server. Zero values take the defaults.
type Options struct {
	HandshakeTimeout  time.Duration // greeting and READY must complete within this (10s)
	MaxMessageSize    int64         // bytes of one message, frames summed (64 MiB)
	MaxPeers          int           // connections at once; more are closed at accept (20000)
	SendQueue         int           // messages queued per peer (1000, like libzmq's HWM)
	SendQueueBytes    int64         // data bytes queued or being written per peer (PUB 8 MiB, ROUTER MaxMessageSize); one message always fits an empty queue
	WriteTimeout      time.Duration // a peer not reading for this long is disconnected (15s)
	ReadBufferSize    int           // per-peer read buffer (4 KiB)
	RecvQueue         int           // ROUTER: messages waiting for Recv, all peers (4096)
	HeartbeatInterval time.Duration // send PING this often (0: never; PINGs are always answered)
	HeartbeatTimeout  time.Duration // drop a peer silent this long after our PING (3 × interval)
	Logger            *slog.Logger
	// OnPeerGone (ROUTER) is called once when the connection holding an identity ends;
	// not for a connection whose identity a newer one took over, as that identity is
	// still connected. It must not block.
	OnPeerGone func(identity []byte)
}

// defaultPubQueueBytes bounds what one slow subscriber pins. Salt's publications
// are ~0.5 KB to a few KB (a job with large arguments more), so 8 MiB still holds
// the 1,000-message count bound of ordinary jobs and only binds on large ones; and
// a publication's frames are shared by every subscriber, so subscribers falling
// behind together pin much the same few MiB, not 8 MiB each.
const defaultPubQueueBytes = 8 << 20

func (o Options) withDefaults(k kind) Options {
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = 64 << 20
	}
	if o.MaxPeers == 0 {
		o.MaxPeers = 20_000
	}
	if o.SendQueue == 0 {
		o.SendQueue = 1000
	}
	if o.SendQueueBytes == 0 {
		// A REQ peer has one reply queued at a time: ROUTER's bound only stops a
		// pipelining DEALER, and must never stop a reply of the largest size.
		o.SendQueueBytes = defaultPubQueueBytes
		if k == kindRouter {
			o.SendQueueBytes = o.MaxMessageSize
		}
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 15 * time.Second
	}
	if o.ReadBufferSize == 0 {
		o.ReadBufferSize = 4 << 10
	}
	if o.RecvQueue == 0 {
		o.RecvQueue = 4096
	}
	if o.HeartbeatInterval > 0 && o.HeartbeatTimeout == 0 {
		o.HeartbeatTimeout = 3 * o.HeartbeatInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}
