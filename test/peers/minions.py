#!/usr/bin/python3
"""N Salt-like minions in one process, on real libzmq, for salt-broker tests.

Each minion has a SUB (IDENTITY = minion id, as Salt sets it) and a REQ without
identity. Like Salt, a request that times out closes its REQ socket and retries
on a new one (a socket otherwise lives across requests), with a new nonce but the same rid and the same length (Salt's
re-encrypted retry); auth retries resend identical bytes. One thread polls every
socket and stdin, so 200 minions cost two sockets each and no threads.

Control: JSON lines on stdin, JSON events on stdout (see README.md).
"""

import argparse
import collections
import heapq
import os
import random
import resource
import sys
import time

import msgpack
import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

MAX_QUEUE = 100_000  # per-minion pending requests; overflow is counted
MAX_LATENCIES = 2_000_000  # aggregate latency samples kept; overflow is counted
ARRIVALS = 4096  # per-minion publication arrival times kept, for recovery times
RECENT = 4096  # per-stream window for telling duplicates from late arrivals
FAKE_PEM = b"-----BEGIN PUBLIC KEY-----\n" + b"A" * 392 + b"\n-----END PUBLIC KEY-----\n"


class Req:
    __slots__ = ("rid", "kind", "size", "reply_size", "tag", "tries", "try_no", "nonce", "timeout", "deadline", "t0", "tq", "body")

    def __init__(self, rid, kind, size, reply_size, tag, tries, timeout):
        self.rid = rid
        self.kind = kind
        self.size = size
        self.reply_size = reply_size
        self.tag = tag
        self.tries = tries
        self.try_no = 0
        self.nonce = None
        self.timeout = timeout
        self.deadline = 0.0
        self.t0 = 0.0
        self.tq = time.monotonic()  # queued: for a return, when its publication arrived
        self.body = None


class Stream:
    """Order tracking for one topic as this minion sees it."""

    __slots__ = ("last", "recent", "recent_set")

    def __init__(self):
        self.last = None
        self.recent = collections.deque()
        self.recent_set = set()

    def remember(self, tseq):
        self.recent.append(tseq)
        self.recent_set.add(tseq)
        if len(self.recent) > RECENT:
            self.recent_set.discard(self.recent.popleft())


class Minion:
    def __init__(self, idx, mid, topics):
        self.idx = idx
        self.id = mid
        self.topics = topics  # None = everything
        self.sub = None
        self.req = None
        self.cur = None
        self.queue = collections.deque()
        self.reset()

    def reset(self):
        self.pubs = 0
        self.warmups = 0
        self.missing = 0
        self.out_of_order = 0
        self.dup = 0
        self.bad_multipart = 0
        self.foreign = 0
        self.first_seq = 0
        self.last_seq = 0
        self.streams = {}
        self.req_ok = 0
        self.req_failed = 0
        self.req_retried = 0
        self.wrong_reply = 0
        self.queue_dropped = 0
        self.returns = 0
        self.running = 0  # jobs whose return is not queued yet (--job-time)
        self.lat_max = 0.0
        self.arrivals = collections.deque(maxlen=ARRIVALS)  # wall-clock times of publications

    def summary(self):
        return {
            "id": self.id,
            "pubs": self.pubs,
            "warmups": self.warmups,
            "missing": self.missing,
            "out_of_order": self.out_of_order,
            "dup": self.dup,
            "bad_multipart": self.bad_multipart,
            "foreign": self.foreign,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "req_ok": self.req_ok,
            "req_failed": self.req_failed,
            "req_retried": self.req_retried,
            "wrong_reply": self.wrong_reply,
            "queue_dropped": self.queue_dropped,
            "returns": self.returns,
            "pending": len(self.queue) + (1 if self.cur else 0) + self.running,
            "latency_max_ms": round(self.lat_max * 1000, 3),
        }


class Swarm:
    def __init__(self, args):
        self.args = args
        lo, _, hi = args.return_timeout.partition("-")
        self.timeout_lo = float(lo)
        self.timeout_hi = float(hi or lo)
        lo, _, hi = args.job_time.partition("-")
        self.job_lo = float(lo)
        self.job_hi = float(hi or lo)
        self.jobs = []  # heap of (due, seq, minion index, rid): returns of jobs still running
        self.lingering = collections.deque()  # (close at, socket): old REQ sockets closed late
        self.job_seq = 0
        self.ctx = zmq.Context(io_threads=1)
        # A context option (Context.setsockopt would only set a default for new sockets,
        # leaving libzmq's 1023): every minion has two sockets, more while one lingers.
        self.ctx.set(zmq.MAX_SOCKETS, max(1024, 4 * args.count + 64))
        self.poller = zmq.Poller()
        self.poller.register(0, zmq.POLLIN)
        self.pub_ep = "tcp://%s:%d" % (args.master, args.pub_port)
        self.ret_ep = "tcp://%s:%d" % (args.master, args.ret_port)
        self.minions = []
        self.by_sub = {}
        self.by_req = {}
        self.waiting = collections.deque()  # minions with queued requests and no slot
        self.inflight = 0
        self.max_inflight = 0
        self.batches = {}  # tag -> counters of one request command
        self.latencies = []
        self.ret_latencies = []  # returns: publication arrival -> good reply, queueing included
        self.lat_overflow = 0
        for i in range(args.count):
            mid = "%s%d" % (args.id_prefix, i)
            topics = None
            if args.filtering:
                topics = {b"broadcast", peerlib.minion_topic(mid).encode()}
            m = Minion(i, mid, topics)
            self.minions.append(m)
            self._open_sub(m)

    # --- sockets -------------------------------------------------------

    def _keepalive(self, s):
        s.setsockopt(zmq.TCP_KEEPALIVE, 1)
        s.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 300)

    def _open_sub(self, m):
        s = self.ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        if m.topics is None:
            s.setsockopt(zmq.SUBSCRIBE, b"")
        else:
            for t in sorted(m.topics):
                s.setsockopt(zmq.SUBSCRIBE, t)
        s.setsockopt(zmq.IDENTITY, m.id.encode())
        self._keepalive(s)
        ivl = self.args.recon_default
        if self.args.recon_randomize:
            ivl = random.randint(self.args.recon_default, self.args.recon_default + self.args.recon_max)
        s.setsockopt(zmq.RECONNECT_IVL, ivl)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, self.args.recon_max)
        s.connect(self.pub_ep)
        m.sub = s
        self.by_sub[s] = m
        self.poller.register(s, zmq.POLLIN)

    def _open_req(self, m):
        s = self.ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        self._keepalive(s)
        s.connect(self.ret_ep)
        m.req = s
        self.by_req[s] = m
        self.poller.register(s, zmq.POLLIN)

    def _close_req(self, m, late=False):
        if m.req is None:
            return
        self.poller.unregister(m.req)
        del self.by_req[m.req]
        if late and self.args.late_close > 0:
            # What a Salt 3007 minion was seen doing: the retry goes out on a new
            # socket while the old one's TCP connection lingers (docs/interop.md).
            self.lingering.append((time.monotonic() + self.args.late_close, m.req))
        else:
            m.req.close(0)
        m.req = None

    def close_lingering(self, now):
        while self.lingering and self.lingering[0][0] <= now:
            self.lingering.popleft()[1].close(0)

    # --- publications --------------------------------------------------

    def on_pub(self, m, frames):
        if len(frames) == 1:
            topic, payload = b"", frames[0]
        elif len(frames) == 2:
            topic, payload = frames
        else:
            m.bad_multipart += 1
            return
        try:
            msg = peerlib.unpack(payload)
            seq, tseq, check, flags = peerlib.PUB_HDR.unpack_from(msg["load"])
        except Exception:  # noqa: BLE001 - anything unreadable breaks the multipart promise
            m.bad_multipart += 1
            return
        if check != peerlib.topic_check(topic):
            m.bad_multipart += 1
            return
        if m.topics is not None and topic not in m.topics:
            m.foreign += 1
        if flags & peerlib.FLAG_WARMUP:
            m.warmups += 1
            return
        m.pubs += 1
        m.arrivals.append(time.time())
        if not m.first_seq:
            m.first_seq = seq
        m.last_seq = max(m.last_seq, seq)
        st = m.streams.get(topic)
        if st is None:
            st = m.streams[topic] = Stream()
        if st.last is None or tseq == st.last + 1:
            st.last = tseq
        elif tseq > st.last + 1:
            m.missing += tseq - st.last - 1
            st.last = tseq
        elif tseq in st.recent_set:
            m.dup += 1
            return
        else:
            # Counted missing when the gap opened; it is late, not lost.
            m.out_of_order += 1
            m.missing = max(0, m.missing - 1)
        st.remember(tseq)
        if self.args.return_on_publish:
            m.returns += 1
            rid = "%s:%d" % (m.id, seq)
            if self.job_hi > 0:
                # The job runs a while before its return is sent, so a link can fail
                # with returns in flight.
                self.job_seq += 1
                due = time.monotonic() + random.uniform(self.job_lo, self.job_hi)
                heapq.heappush(self.jobs, (due, self.job_seq, m.idx, rid))
                m.running += 1
            else:
                self.send_return(m, rid)

    def send_return(self, m, rid):
        self.enqueue(m, Req(rid, "aes", self.args.return_size, self.args.return_reply_size, None, self.args.tries, self.pick_timeout()))

    def finish_jobs(self, now):
        while self.jobs and self.jobs[0][0] <= now:
            _, _, idx, rid = heapq.heappop(self.jobs)
            m = self.minions[idx]
            m.running -= 1
            self.send_return(m, rid)

    # --- requests ------------------------------------------------------

    def pick_timeout(self):
        # Salt picks return_retry_timer once per send and uses it for every try.
        return random.uniform(self.timeout_lo, self.timeout_hi)

    def enqueue(self, m, req):
        if len(m.queue) >= MAX_QUEUE:
            m.queue_dropped += 1
            self.finish_batch(req, ok=False)
            return
        m.queue.append(req)
        if m.cur is None and len(m.queue) == 1:
            self.waiting.append(m)
        self.pump()

    def pump(self):
        while self.waiting and (self.max_inflight <= 0 or self.inflight < self.max_inflight):
            m = self.waiting.popleft()
            if m.cur is not None or not m.queue:
                continue
            m.cur = m.queue.popleft()
            m.cur.t0 = time.monotonic()
            self.inflight += 1
            self.send_try(m)

    def build(self, m, req):
        pad = peerlib.filler(max(0, req.size - 200))
        if req.kind == "auth":
            load = {
                "cmd": "_auth", "id": m.id, "nonce": req.nonce, "pub": FAKE_PEM, "enc_algo": "OAEP-SHA1",
                "sig_algo": "PKCS1v15-SHA1", "rid": req.rid, "reply_size": req.reply_size, "pad": pad,
            }
            return msgpack.packb({"enc": "clear", "load": load, "version": 3}, use_bin_type=True)
        load = msgpack.packb({"rid": req.rid, "nonce": req.nonce, "reply_size": req.reply_size, "pad": pad}, use_bin_type=True)
        return msgpack.packb(
            {"enc": "aes", "load": load, "version": 3, "id": m.id, "enc_algo": "OAEP-SHA1", "sig_algo": "PKCS1v15-SHA1"},
            use_bin_type=True,
        )

    def send_try(self, m):
        req = m.cur
        req.try_no += 1
        if req.kind == "auth":
            # Salt makes the auth nonce once per sign_in: retries are identical bytes.
            if req.body is None:
                req.nonce = os.urandom(16).hex()
                req.body = self.build(m, req)
            body = req.body
        else:
            req.nonce = os.urandom(16).hex()  # fixed length: a retry keeps the length
            body = self.build(m, req)
        if m.req is None:
            # Salt keeps one REQ per channel and only replaces it after a timeout.
            self._open_req(m)
        req.deadline = time.monotonic() + req.timeout
        m.req.send(body, copy=len(body) < 65536)

    def on_reply(self, m):
        try:
            data = m.req.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        req = m.cur
        ok = False
        try:
            if req.kind == "auth":
                body = peerlib.unpack(data)["load"]
                ok = isinstance(body, bytes) and peerlib.check_reply_body(body, req.rid, req.nonce, req.reply_size)
            else:
                # A bare msgpack bin, checked in place: no copy of large replies.
                off = peerlib.bin_payload(data)
                ok = off >= 0 and peerlib.check_reply_body(data, req.rid, req.nonce, req.reply_size, off)
        except Exception:  # noqa: BLE001 - an unreadable reply is a wrong reply
            ok = False
        if not ok:
            # Salt would fail the nonce/AES check here and re-auth.
            m.wrong_reply += 1
            m.req_failed += 1
        else:
            m.req_ok += 1
            lat = time.monotonic() - req.t0
            m.lat_max = max(m.lat_max, lat)
            if len(self.latencies) < MAX_LATENCIES:
                self.latencies.append(lat)
                if req.tag is None:
                    self.ret_latencies.append(time.monotonic() - req.tq)
            else:
                self.lat_overflow += 1
        self.done(m, req, ok, wrong=not ok)

    def on_timeout(self, m):
        req = m.cur
        self._close_req(m, late=True)
        if req.try_no < req.tries:
            m.req_retried += 1
            b = self.batches.get(req.tag)
            if b:
                b["retried"] += 1
            self.send_try(m)
            return
        m.req_failed += 1
        self.done(m, req, False)

    def done(self, m, req, ok, wrong=False):
        m.cur = None
        self.inflight -= 1
        self.finish_batch(req, ok, wrong)
        if m.queue:
            self.waiting.append(m)
        self.pump()

    def finish_batch(self, req, ok, wrong=False):
        b = self.batches.get(req.tag)
        if b is None:
            return
        b["ok" if ok else "failed"] += 1
        if wrong:
            b["wrong_reply"] += 1
        if b["ok"] + b["failed"] >= b["total"]:
            del self.batches[req.tag]
            b["elapsed_ms"] = round((time.monotonic() - b.pop("t0")) * 1000, 3)
            peerlib.emit("request_done", tag=req.tag, **b)

    def cmd_request(self, cmd):
        count = int(cmd.get("count", 1))
        size = int(cmd.get("size", 0))
        reply_size = int(cmd.get("reply_size", 0))
        kind = cmd.get("kind", "aes")
        tag = cmd.get("tag") or "req-%d" % time.monotonic_ns()
        self.max_inflight = int(cmd.get("concurrency", 0))
        tries = int(cmd.get("tries", self.args.tries))
        timeout_ms = cmd.get("timeout_ms")
        total = count * len(self.minions)
        if total == 0:
            peerlib.emit("request_done", tag=tag, total=0, ok=0, failed=0, retried=0, wrong_reply=0, elapsed_ms=0)
            return
        self.batches[tag] = {"total": total, "ok": 0, "failed": 0, "retried": 0, "wrong_reply": 0, "t0": time.monotonic()}
        for k in range(count):
            for m in self.minions:
                timeout = float(timeout_ms) / 1000.0 if timeout_ms else self.pick_timeout()
                rid = "%s:%s:%d" % (m.id, tag, k)
                self.enqueue(m, Req(rid, kind, size, reply_size, tag, tries, timeout))

    # --- stats and loop ------------------------------------------------

    def recovery(self, since):
        """How long after the wall-clock time `since` the first publication reached
        any minion and every minion (that got one at all), in ms."""
        firsts = []
        for m in self.minions:
            t = next((a for a in m.arrivals if a >= since), None)
            if t is not None:
                firsts.append(t - since)
        if not firsts:
            return {"first_ms": -1, "all_ms": -1, "minions": 0}
        return {"first_ms": round(min(firsts) * 1000, 1), "all_ms": round(max(firsts) * 1000, 1), "minions": len(firsts)}

    def stats(self, tag, brief, since=None):
        agg = collections.Counter()
        per = []
        for m in self.minions:
            s = m.summary()
            for k, v in s.items():
                if isinstance(v, int) and k not in ("first_seq", "last_seq"):
                    agg[k] += v
            per.append(s)
        out = dict(agg)
        out["minions"] = len(self.minions)
        out["warm_minions"] = sum(1 for m in self.minions if m.warmups > 0)
        out["latency_ms"] = {k: round(v * 1000, 3) for k, v in peerlib.percentiles(self.latencies).items()}
        out["latency_ms"]["max"] = round(max(self.latencies) * 1000, 3) if self.latencies else 0.0
        out["latency_ms"]["count"] = len(self.latencies)
        out["latency_overflow"] = self.lat_overflow
        out["return_latency_ms"] = {k: round(v * 1000, 3) for k, v in peerlib.percentiles(self.ret_latencies).items()}
        out["return_latency_ms"]["max"] = round(max(self.ret_latencies) * 1000, 3) if self.ret_latencies else 0.0
        out["return_latency_ms"]["count"] = len(self.ret_latencies)
        if since is not None:
            out["recovery"] = self.recovery(float(since))
        out["inflight"] = self.inflight
        if not brief:
            out["per_minion"] = per
        peerlib.emit("stats", tag=tag, **out)

    def cmd_latencies(self, cmd):
        """The latency samples themselves, sorted, in ms: of returns or of every request.
        With points > 0, at most that many, evenly spaced in rank, each with its rank
        (0-based), so a CDF can be drawn from them."""
        values = sorted(self.ret_latencies if cmd.get("which") == "return" else self.latencies)
        n = len(values)
        points = int(cmd.get("points", 0))
        if points > 0 and n > points:
            ranks = sorted({i * (n - 1) // (points - 1) for i in range(points)}) if points > 1 else [n - 1]
        else:
            ranks = range(n)
        peerlib.emit(
            "latencies", tag=cmd.get("tag"), count=n, overflow=self.lat_overflow,
            ms=[round(values[k] * 1000, 3) for k in ranks], rank=list(ranks),
        )

    def run(self):
        reader = peerlib.LineReader()
        peerlib.emit("ready", count=len(self.minions), pid=os.getpid())
        next_scan = 0.0
        while True:
            now = time.monotonic()
            wait = 100
            if self.inflight:
                soonest = min((m.cur.deadline for m in self.minions if m.cur is not None), default=now + 0.1)
                wait = max(0, min(wait, int((soonest - now) * 1000) + 1))
            if self.jobs:
                wait = max(0, min(wait, int((self.jobs[0][0] - now) * 1000) + 1))
            events = self.poller.poll(wait)
            for sock, _ in events:
                if sock == 0:
                    for line in reader.read_lines():
                        cmd = peerlib.parse_cmd(line)
                        if cmd is not None and not self.command(cmd):
                            return
                    if reader.eof:
                        return
                    continue
                m = self.by_sub.get(sock)
                if m is not None:
                    for _ in range(1000):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.on_pub(m, frames)
                    continue
                m = self.by_req.get(sock)
                if m is not None and m.req is sock:
                    self.on_reply(m)
            now = time.monotonic()
            self.finish_jobs(now)
            self.close_lingering(now)
            if self.inflight and now >= next_scan:
                next_scan = now + 0.005
                for m in self.minions:
                    if m.cur is not None and m.req is not None and now >= m.cur.deadline:
                        self.on_timeout(m)

    def command(self, cmd):
        c = cmd["cmd"]
        if c == "request":
            self.cmd_request(cmd)
        elif c == "stats":
            self.stats(cmd.get("tag"), bool(cmd.get("brief", False)), cmd.get("since"))
        elif c == "latencies":
            self.cmd_latencies(cmd)
        elif c == "reset":
            for m in self.minions:
                m.reset()
            self.jobs = []
            self.latencies = []
            self.ret_latencies = []
            self.lat_overflow = 0
            peerlib.emit("reset", tag=cmd.get("tag"))
        elif c == "quit":
            return False
        else:
            peerlib.emit("error", error="unknown cmd %r" % c)
        return True

    def close(self):
        for _, sock in self.lingering:
            sock.close(0)
        for m in self.minions:
            self._close_req(m)
            if m.sub is not None:
                m.sub.close(0)
        self.ctx.term()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--master", required=True)
    ap.add_argument("--pub-port", type=int, required=True)
    ap.add_argument("--ret-port", type=int, required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--id-prefix", default="m")
    ap.add_argument("--filtering", action="store_true")
    ap.add_argument("--return-on-publish", action="store_true")
    ap.add_argument("--return-size", type=int, default=500)
    ap.add_argument("--return-reply-size", type=int, default=99)
    ap.add_argument("--return-timeout", default="5-10", help="seconds, LO-HI (random per request, like return_retry_timer)")
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--late-close", type=float, default=0, help="seconds an old REQ socket stays open after a timeout (0: closed at once)")
    ap.add_argument("--job-time", default="0", help="seconds, LO-HI: how long a job runs before its return is sent")
    ap.add_argument("--recon-default", type=int, default=1000, help="ms (Salt recon_default)")
    ap.add_argument("--recon-max", type=int, default=10000, help="ms (Salt recon_max)")
    ap.add_argument("--recon-randomize", action="store_true")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 8 * args.count + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    swarm = Swarm(args)
    try:
        swarm.run()
    finally:
        swarm.close()
        peerlib.emit("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
