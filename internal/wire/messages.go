package wire

import (
	"crypto/rand"
	"encoding/binary"
	"math"
	"time"
)

// Hello opens the control stream of every connection from an edge.
type Hello struct {
	Version     uint32
	EdgeName    string
	EdgeSession uint64 // random per edge process (or persisted); request IDs are scoped to it
	CoreEpoch   uint64 // the core epoch PubCursor refers to; 0 when the edge has none
	PubCursor   uint64 // last publication sequence the edge re-published
	Pending     uint32 // requests the edge holds unanswered, for the core's logs
	// Conn is this connection's slot in the edge session's pool (0, 1, ...): an
	// edge runs several connections of one session where one congestion window is
	// not enough. A new connection in a slot replaces the one the core still holds
	// there (dead, or left behind); the session's other connections stay.
	Conn uint32
}

// Encode returns the record body.
func (m Hello) Encode() []byte {
	var e Encoder
	return e.U32(m.Version).String(m.EdgeName).U64(m.EdgeSession).U64(m.CoreEpoch).U64(m.PubCursor).U32(m.Pending).U32(m.Conn).Body()
}

// DecodeHello decodes a THello body.
func DecodeHello(b []byte) (Hello, error) {
	d := NewDecoder(b)
	m := Hello{Version: d.U32(), EdgeName: d.String(), EdgeSession: d.U64(), CoreEpoch: d.U64(), PubCursor: d.U64(), Pending: d.U32(), Conn: d.U32()}
	return m, d.Err()
}

// HelloAck accepts an edge.
type HelloAck struct {
	Version   uint32
	CoreName  string
	CoreEpoch uint64 // random per core process: sequences of another epoch mean nothing here
	HeadSeq   uint64 // last sequence assigned so far
}

// Encode returns the record body.
func (m HelloAck) Encode() []byte {
	var e Encoder
	return e.U32(m.Version).String(m.CoreName).U64(m.CoreEpoch).U64(m.HeadSeq).Body()
}

// DecodeHelloAck decodes a THelloAck body.
func DecodeHelloAck(b []byte) (HelloAck, error) {
	d := NewDecoder(b)
	m := HelloAck{Version: d.U32(), CoreName: d.String(), CoreEpoch: d.U64(), HeadSeq: d.U64()}
	return m, d.Err()
}

// Subscribe opens the publication stream: send everything after Cursor of Epoch.
type Subscribe struct {
	CoreEpoch uint64
	Cursor    uint64
}

// Encode returns the record body.
func (m Subscribe) Encode() []byte {
	var e Encoder
	return e.U64(m.CoreEpoch).U64(m.Cursor).Body()
}

// DecodeSubscribe decodes a TSubscribe body.
func DecodeSubscribe(b []byte) (Subscribe, error) {
	d := NewDecoder(b)
	m := Subscribe{CoreEpoch: d.U64(), Cursor: d.U64()}
	return m, d.Err()
}

// Pub is one publication of the master, numbered by the core.
type Pub struct {
	Seq    uint64
	Frames [][]byte
}

// Encode returns the record body.
func (m Pub) Encode() []byte {
	e := Encoder{b: make([]byte, 0, 16+Size(m.Frames)+4*len(m.Frames))}
	return e.U64(m.Seq).Multipart(m.Frames).Body()
}

// DecodePub decodes a TPub body; the frames alias b.
func DecodePub(b []byte) (Pub, error) {
	d := NewDecoder(b)
	m := Pub{Seq: d.U64(), Frames: d.Multipart()}
	return m, d.Err()
}

// Gap reports publications [From, To] that the core can no longer replay.
type Gap struct{ From, To uint64 }

// Encode returns the record body.
func (m Gap) Encode() []byte {
	var e Encoder
	return e.U64(m.From).U64(m.To).Body()
}

// DecodeGap decodes a TGap body.
func DecodeGap(b []byte) (Gap, error) {
	d := NewDecoder(b)
	m := Gap{From: d.U64(), To: d.U64()}
	return m, d.Err()
}

// Request carries one minion request. ID is unique within the edge session and
// stays the same when the edge re-sends the request on a new connection.
type Request struct {
	ID     uint64
	Frames [][]byte // the frames after the REQ envelope's empty delimiter
	// MaxQueueAge is how much longer the request is of use, as the edge's class
	// policy sees it when it sends (its class's max age minus the age it has at the
	// edge): the core refuses it with RefusedStale if it is still waiting for a slot
	// at the master after that. Only the edge reads Salt, so only it can say. Sent
	// in whole milliseconds, rounded up; 0 means none given (the core's own cap, its
	// dedup TTL, applies).
	MaxQueueAge time.Duration
}

// Encode returns the record body.
func (m Request) Encode() []byte {
	e := Encoder{b: make([]byte, 0, 20+Size(m.Frames)+4*len(m.Frames))}
	return e.U64(m.ID).Multipart(m.Frames).U32(millis(m.MaxQueueAge)).Body()
}

// DecodeRequest decodes a TRequest body; the frames alias b.
func DecodeRequest(b []byte) (Request, error) {
	d := NewDecoder(b)
	m := Request{ID: d.U64(), Frames: d.Multipart(), MaxQueueAge: time.Duration(d.U32()) * time.Millisecond}
	return m, d.Err()
}

// millis encodes a duration as whole milliseconds, rounded up so a positive one
// never becomes 0 ("none"), clamped to what 32 bits hold (49 days).
func millis(d time.Duration) uint32 {
	switch {
	case d <= 0:
		return 0
	case d >= math.MaxUint32*time.Millisecond:
		return math.MaxUint32
	}
	return uint32((d + time.Millisecond - 1) / time.Millisecond)
}

// Reply carries the master's reply to a request.
type Reply struct {
	ID     uint64
	Frames [][]byte
}

// Encode returns the record body.
func (m Reply) Encode() []byte {
	e := Encoder{b: make([]byte, 0, 16+Size(m.Frames)+4*len(m.Frames))}
	return e.U64(m.ID).Multipart(m.Frames).Body()
}

// DecodeReply decodes a TReply body; the frames alias b.
func DecodeReply(b []byte) (Reply, error) {
	d := NewDecoder(b)
	m := Reply{ID: d.U64(), Frames: d.Multipart()}
	return m, d.Err()
}

// Refusal codes: why a request will not get a reply through the tunnel.
const (
	RefusedTooLarge  byte = 1 // over the core's maximum message size
	RefusedBusy      byte = 2 // the core's tables are full; the minion's own retry covers it
	RefusedCancelled byte = 3 // the edge cancelled it before it reached the master
	RefusedTimeout   byte = 4 // the master did not answer in time
	RefusedStale     byte = 5 // older than its class allows: queued at the core past its Request.MaxQueueAge
	RefusedShutdown  byte = 6 // the core is stopping
)

// Refused tells the edge a request gets no reply.
type Refused struct {
	ID     uint64
	Code   byte
	Reason string
}

// Encode returns the record body.
func (m Refused) Encode() []byte {
	var e Encoder
	return e.U64(m.ID).Byte(m.Code).String(m.Reason).Body()
}

// DecodeRefused decodes a TRefused body.
func DecodeRefused(b []byte) (Refused, error) {
	d := NewDecoder(b)
	m := Refused{ID: d.U64(), Code: d.Byte(), Reason: d.String()}
	return m, d.Err()
}

// Cancel results.
const (
	CancelDone     byte = 1 // the request never reached the master and never will
	CancelAtMaster byte = 2 // the master already has it; its reply will come as usual
)

// U64Body encodes a body that is one integer (ping, pong, ack, done, cancel).
func U64Body(v uint64) []byte {
	var e Encoder
	return e.U64(v).Body()
}

// DecodeU64 decodes a body that is one integer.
func DecodeU64(b []byte) (uint64, error) {
	d := NewDecoder(b)
	v := d.U64()
	return v, d.Err()
}

// CancelReply answers a cancel.
type CancelReply struct {
	ID     uint64
	Result byte
}

// Encode returns the record body.
func (m CancelReply) Encode() []byte {
	var e Encoder
	return e.U64(m.ID).Byte(m.Result).Body()
}

// DecodeCancelReply decodes a TCancelReply body.
func DecodeCancelReply(b []byte) (CancelReply, error) {
	d := NewDecoder(b)
	m := CancelReply{ID: d.U64(), Result: d.Byte()}
	return m, d.Err()
}

// RandomID is a random non-zero 64-bit identifier for edge sessions and core epochs
// (zero means "none" in Hello and Subscribe).
func RandomID() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:]) | 1
}
