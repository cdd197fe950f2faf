"""Shared helpers for the Salt-like test peers.

The peers talk to the Go harness with JSON lines: commands arrive on stdin,
events leave on stdout. Everything that both sides of the fake Salt wire must
agree on (payload layout, reply layout, filler bytes) lives here so master and
minions cannot drift apart.
"""

import hashlib
import json
import os
import struct
import sys
import threading

import msgpack

_out_lock = threading.Lock()


def emit(event, **fields):
    """Print one JSON event line; stdout is shared by threads, so serialise."""
    fields["event"] = event
    line = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def log(msg):
    """Human diagnostics go to stderr so they never confuse the JSON reader."""
    with _out_lock:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()


class LineReader:
    """Non-blocking line splitter for fd 0, so a poll loop can include stdin."""

    def __init__(self, fd=0, limit=1 << 20):
        self.fd = fd
        self.buf = b""
        self.limit = limit
        self.eof = False

    def read_lines(self):
        data = os.read(self.fd, 65536)
        if not data:
            self.eof = True
            return []
        self.buf += data
        if len(self.buf) > self.limit and b"\n" not in self.buf:
            # A command line this long is a harness bug; drop it rather than grow.
            log("stdin line over %d bytes dropped" % self.limit)
            self.buf = b""
            return []
        *lines, self.buf = self.buf.split(b"\n")
        return [ln for ln in lines if ln.strip()]


def parse_cmd(line):
    try:
        cmd = json.loads(line)
    except ValueError as exc:
        emit("error", error="bad command json: %s" % exc)
        return None
    if not isinstance(cmd, dict) or "cmd" not in cmd:
        emit("error", error="command without cmd field")
        return None
    return cmd


# Position-dependent filler: a misplaced or truncated chunk of a large reply
# does not compare equal, which a constant byte would hide.
_FILL_UNIT = bytes(range(256))
_fill = _FILL_UNIT * 4096  # 1 MiB
_fill_lock = threading.Lock()


def filler(n):
    """Return a memoryview of n filler bytes (grown on demand, never copied)."""
    global _fill
    if n > len(_fill):
        with _fill_lock:
            if n > len(_fill):
                reps = (n + len(_FILL_UNIT) - 1) // len(_FILL_UNIT)
                _fill = _FILL_UNIT * reps
    return memoryview(_fill)[:n]


def topic_check(topic):
    """8 bytes tying a publication payload to its topic frame (multipart intact)."""
    return hashlib.sha1(topic).digest()[:8]


def minion_topic(minion_id):
    """The topic Salt's master uses for one minion with zmq_filtering."""
    return hashlib.sha1(minion_id.encode()).hexdigest()


# Publication load layout: seq, per-topic seq, topic check, flags, then pad.
PUB_HDR = struct.Struct(">QQ8sB")
FLAG_WARMUP = 1


def reply_prefix(rid, nonce):
    return ("%s|%s|" % (rid, nonce)).encode()


def reply_body(rid, nonce, size):
    """Reply content: rid and nonce first (the minion's nonce check), then filler."""
    prefix = reply_prefix(rid, nonce)
    if size <= len(prefix):
        return prefix[:size]
    return b"".join((prefix, filler(size - len(prefix))))


def check_reply_body(data, rid, nonce, size, offset=0):
    """True when data[offset:] is exactly the reply to (rid, nonce) of the asked size.

    bytes.startswith with a start offset compares in place: an 8 MiB reply is
    checked without a single copy (a memoryview comparison is 15x slower).
    """
    if len(data) - offset != size:
        return False
    prefix = reply_prefix(rid, nonce)
    if size <= len(prefix):
        return data.startswith(prefix[:size], offset)
    return data.startswith(prefix, offset) and data.startswith(filler(size - len(prefix)), offset + len(prefix))


def bin_payload(data):
    """Offset of a msgpack bin's payload in data (no copy), or -1 if not a bin."""
    if not data:
        return -1
    t = data[0]
    if t == 0xC4 and len(data) >= 2:
        n, off = data[1], 2
    elif t == 0xC5 and len(data) >= 3:
        n, off = struct.unpack_from(">H", data, 1)[0], 3
    elif t == 0xC6 and len(data) >= 5:
        n, off = struct.unpack_from(">I", data, 1)[0], 5
    else:
        return -1
    return off if off + n == len(data) else -1


def bin_header(n):
    """msgpack bin header, so large replies are framed without an extra copy."""
    if n < 1 << 8:
        return b"\xc4" + struct.pack(">B", n)
    if n < 1 << 16:
        return b"\xc5" + struct.pack(">H", n)
    return b"\xc6" + struct.pack(">I", n)


def percentiles(values, ps=(50, 90, 99)):
    if not values:
        return {("p%d" % p): 0.0 for p in ps}
    s = sorted(values)
    out = {}
    for p in ps:
        k = min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))
        out["p%d" % p] = s[k]
    return out


def unpack(data):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
