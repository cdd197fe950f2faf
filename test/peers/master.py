#!/usr/bin/python3
"""A Salt-like master on real libzmq for salt-broker tests.

PUB bound like Salt's publish daemon; ROUTER bound on the ret port in front of
a DEALER -> REP worker pool like Salt's ReqServer. The ROUTER<->DEALER proxy is
a Python loop instead of zmq.proxy so it can see every request: envelope depth
(frames before the empty delimiter), rid duplicates, and it can hold replies
back to provoke the minions' retries.

Control: JSON lines on stdin, JSON events on stdout (see README.md).
"""

import argparse
import heapq
import os
import struct
import sys
import threading
import time

import msgpack
import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

SIG = b"\x5a" * 256  # stands in for the RSA signature Salt puts on publications
MAX_RIDS = 1_000_000  # bound on the rid table; overflow is counted


class Counters:
    """Request-side counters, shared by the proxy thread and the stats reader."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.requests = 0
        self.aes = 0
        self.auth = 0
        self.bad = 0
        self.depth = {}
        self.rids = {}  # rid -> (tries, last identity, last nonce, last length)
        self.rid_overflow = 0
        self.dup_rids = 0
        self.dup_new_identity = 0
        self.dup_new_nonce = 0
        self.dup_same_length = 0
        self.dup_examples = []  # the first few duplicated rids, to find them in logs
        self.replies = 0
        self.reply_bytes = 0
        self.delayed = 0
        self.dropped = 0
        self.request_bytes = 0

    def snapshot(self):
        with self.lock:
            return {
                "requests": self.requests,
                "aes": self.aes,
                "auth": self.auth,
                "bad": self.bad,
                "depth": {str(k): v for k, v in sorted(self.depth.items())},
                "unique_rids": len(self.rids),
                "rid_overflow": self.rid_overflow,
                "dup_rids": self.dup_rids,
                "dup_new_identity": self.dup_new_identity,
                "dup_new_nonce": self.dup_new_nonce,
                "dup_same_length": self.dup_same_length,
                "dup_examples": list(self.dup_examples),
                "replies": self.replies,
                "reply_bytes": self.reply_bytes,
                "request_bytes": self.request_bytes,
                "delayed": self.delayed,
                "dropped": self.dropped,
            }


class Policy:
    """How the proxy treats replies: delay or drop the first N tries of a rid."""

    def __init__(self):
        self.lock = threading.Lock()
        self.delay = 0.0
        self.tries = 0  # 0 = every try
        self.drop = False


def parse_request(body):
    """Return (kind, rid, nonce, reply_size) or raise ValueError."""
    msg = peerlib.unpack(body)
    if not isinstance(msg, dict) or msg.get("version", 0) < 3:
        raise ValueError("not a version-3 request")
    enc = msg.get("enc")
    if enc == "clear":
        load = msg.get("load")
        if not isinstance(load, dict) or load.get("cmd") != "_auth":
            raise ValueError("clear request is not _auth")
        return "auth", str(load.get("rid", load.get("id"))), str(load["nonce"]), int(load.get("reply_size", 0))
    if enc == "aes":
        if "id" not in msg:
            raise ValueError("aes request without clear id")
        load = peerlib.unpack(msg["load"])
        return "aes", str(load["rid"]), str(load["nonce"]), int(load["reply_size"])
    raise ValueError("unknown enc %r" % (enc,))


def build_reply(kind, rid, nonce, size):
    body = peerlib.reply_body(rid, nonce, size)
    if kind == "auth":
        # Salt's auth reply is a clear map around a signed load.
        return msgpack.packb({"enc": "clear", "load": body, "sig": SIG}, use_bin_type=True)
    # Every other Salt reply is a bare msgpack bin (the AES blob).
    return b"".join((peerlib.bin_header(len(body)), body))


def worker(ctx, stop):
    """A REP worker like Salt's MWorker: sees no envelope, only the request."""
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect("inproc://workers")
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    try:
        while not stop.is_set():
            if not poller.poll(200):
                continue
            body = sock.recv()
            try:
                kind, rid, nonce, size = parse_request(body)
                reply = build_reply(kind, rid, nonce, size)
            except Exception as exc:  # noqa: BLE001 - any garbage is a bad request
                reply = msgpack.packb("bad load: %s" % exc)
            sock.send(reply, copy=False)
    except zmq.ContextTerminated:
        pass
    finally:
        sock.close(0)


def proxy(ctx, router, counters, policy, stop):
    """ROUTER<->DEALER in Python: count, classify, hold back replies."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.bind("inproc://workers")
    ready.set()
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(dealer, zmq.POLLIN)
    held = []  # heap of (release time, n, frames)
    holds = {}  # envelope tuple -> "delay" | "drop", decided on the request path
    n = 0
    try:
        while not stop.is_set():
            timeout = 100
            if held:
                timeout = max(0, min(timeout, int((held[0][0] - time.monotonic()) * 1000) + 1))
            events = dict(poller.poll(timeout))
            now = time.monotonic()
            while held and held[0][0] <= now:
                _, _, frames = heapq.heappop(held)
                router.send_multipart(frames, copy=False)
            if router in events:
                for _ in range(256):
                    try:
                        frames = router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    decision = account(frames, counters, policy)
                    if decision is None:
                        continue
                    if decision:
                        holds[tuple(frames[: frames.index(b"")])] = decision
                    dealer.send_multipart(frames, copy=False)
            if dealer in events:
                for _ in range(256):
                    try:
                        frames = dealer.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    env = tuple(f.bytes for f in frames[: [len(f) for f in frames].index(0)])
                    with counters.lock:
                        counters.replies += 1
                        counters.reply_bytes += len(frames[-1])
                    decision = holds.pop(env, "")
                    if decision == "drop":
                        with counters.lock:
                            counters.dropped += 1
                        continue
                    if decision == "delay":
                        with policy.lock:
                            delay = policy.delay
                        with counters.lock:
                            counters.delayed += 1
                        n += 1
                        heapq.heappush(held, (now + delay, n, frames))
                        continue
                    router.send_multipart(frames, copy=False)
    except zmq.ContextTerminated:
        pass
    finally:
        dealer.close(0)


ready = threading.Event()


def account(frames, counters, policy):
    """Count one request. Returns None to drop it, '' to pass, or a hold decision."""
    try:
        delim = frames.index(b"")
    except ValueError:
        delim = -1
    body = frames[-1]
    try:
        if delim < 1 or delim != len(frames) - 2:
            raise ValueError("envelope without delimiter")
        kind, rid, nonce, _ = parse_request(body)
    except Exception:  # noqa: BLE001 - garbage is counted, then answered by a worker or dropped
        with counters.lock:
            counters.requests += 1
            counters.bad += 1
        # Without a well-formed envelope there is nobody to answer.
        return None if delim < 1 else ""
    identity = b"".join(frames[:delim])
    with counters.lock:
        counters.requests += 1
        counters.request_bytes += len(body)
        counters.depth[delim] = counters.depth.get(delim, 0) + 1
        if kind == "auth":
            counters.auth += 1
        else:
            counters.aes += 1
        prev = counters.rids.get(rid)
        if prev is None:
            if len(counters.rids) >= MAX_RIDS:
                counters.rid_overflow += 1
                tries = 1
            else:
                counters.rids[rid] = (1, identity, nonce, len(body))
                tries = 1
        else:
            tries = prev[0] + 1
            counters.dup_rids += 1
            if len(counters.dup_examples) < 10:
                counters.dup_examples.append(rid)
            if prev[1] != identity:
                counters.dup_new_identity += 1
            if prev[2] != nonce:
                counters.dup_new_nonce += 1
            if prev[3] == len(body):
                counters.dup_same_length += 1
            counters.rids[rid] = (tries, identity, nonce, len(body))
    with policy.lock:
        if policy.delay <= 0 and not policy.drop:
            return ""
        if policy.tries and tries > policy.tries:
            return ""
        return "drop" if policy.drop else "delay"


class Publisher:
    """Owns the PUB socket; publishes in its own thread so stats stay live."""

    def __init__(self, pub, stop):
        self.pub = pub
        self.stop = stop
        self.cancel = threading.Event()
        self.jobs = []
        self.cond = threading.Condition()
        self.seq = 0
        self.tseq = {}
        self.published = 0
        self.warmups = 0
        self.busy = False

    def submit(self, cmd):
        with self.cond:
            if len(self.jobs) >= 64:
                peerlib.emit("error", error="publish queue full")
                return
            self.jobs.append(cmd)
            self.cond.notify()

    def run(self):
        try:
            while True:
                with self.cond:
                    while not self.jobs and not self.stop.is_set():
                        self.cond.wait(0.2)
                    if self.stop.is_set():
                        return
                    cmd = self.jobs.pop(0)
                    self.busy = True
                try:
                    self.publish(cmd)
                finally:
                    with self.cond:
                        self.busy = False
        except zmq.ContextTerminated:
            pass
        finally:
            self.pub.close(1000)

    def publish(self, cmd):
        count = int(cmd.get("count", 1))
        rate = float(cmd.get("rate", 0))
        size = int(cmd.get("size", 0))
        topics = cmd.get("topics")
        warm = bool(cmd.get("warmup", False))
        if "start_seq" in cmd and cmd["start_seq"] is not None:
            self.seq = int(cmd["start_seq"]) - 1
        for t, v in (cmd.get("topic_start") or {}).items():
            self.tseq[t] = int(v) - 1
        topics_b = [t.encode() for t in topics] if topics else None
        self.cancel.clear()
        t0 = time.monotonic()
        first = None
        sent = 0
        for i in range(count):
            if self.stop.is_set() or self.cancel.is_set():
                break
            if rate > 0:
                due = t0 + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            topic = topics_b[i % len(topics_b)] if topics_b else b""
            key = topic.decode()
            if warm:
                seq, tseq = 0, 0
            else:
                self.seq += 1
                seq = self.seq
                tseq = self.tseq.get(key, 0) + 1
                self.tseq[key] = tseq
                if first is None:
                    first = seq
            hdr = peerlib.PUB_HDR.pack(seq, tseq, peerlib.topic_check(topic), peerlib.FLAG_WARMUP if warm else 0)
            pad = max(0, size - len(hdr) - 300)
            load = b"".join((hdr, peerlib.filler(pad)))
            payload = msgpack.packb(
                {"enc": "aes", "load": load, "sig_algo": "PKCS1v15-SHA224", "sig": SIG}, use_bin_type=True
            )
            if topics_b:
                self.pub.send_multipart((topic, payload), copy=False)
            else:
                self.pub.send(payload, copy=False)
            sent += 1
        elapsed = time.monotonic() - t0
        if warm:
            self.warmups += sent
        else:
            self.published += sent
        peerlib.emit(
            "published",
            tag=cmd.get("tag"),
            count=sent,
            first_seq=first if first is not None else 0,
            last_seq=self.seq if first is not None else 0,
            warmup=warm,
            cancelled=sent < count,
            elapsed_ms=round(elapsed * 1000, 3),
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pub", required=True, help="tcp://IP:PORT (port 0 = any free port)")
    ap.add_argument("--ret", required=True, help="tcp://IP:PORT (port 0 = any free port)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--pub-hwm", type=int, default=1000)
    args = ap.parse_args()

    ctx = zmq.Context(io_threads=1)
    stop = threading.Event()
    counters = Counters()
    policy = Policy()

    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, args.pub_hwm)
    pub.setsockopt(zmq.RCVHWM, args.pub_hwm)
    pub.setsockopt(zmq.BACKLOG, 1000)
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.BACKLOG, 1000)
    try:
        pub.bind(_wild(args.pub))
        router.bind(_wild(args.ret))
    except zmq.ZMQError as exc:
        peerlib.emit("error", error="bind: %s" % exc)
        pub.close(0)
        router.close(0)
        ctx.term()
        return 2
    pub_ep = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    ret_ep = router.getsockopt(zmq.LAST_ENDPOINT).decode()

    publisher = Publisher(pub, stop)
    threads = [threading.Thread(target=proxy, args=(ctx, router, counters, policy, stop), name="proxy")]
    threads[0].start()
    ready.wait()
    for i in range(args.workers):
        threads.append(threading.Thread(target=worker, args=(ctx, stop), name="worker-%d" % i))
    threads.append(threading.Thread(target=publisher.run, name="publisher"))
    for th in threads[1:]:
        th.start()

    peerlib.emit("ready", pub=pub_ep, ret=ret_ep, pub_port=_port(pub_ep), ret_port=_port(ret_ep), pid=os.getpid())
    reader = peerlib.LineReader()
    try:
        while not reader.eof:
            for line in reader.read_lines():
                cmd = peerlib.parse_cmd(line)
                if cmd is None:
                    continue
                c = cmd["cmd"]
                if c == "publish":
                    publisher.submit(cmd)
                elif c == "cancel":
                    publisher.cancel.set()
                elif c == "stats":
                    snap = counters.snapshot()
                    with publisher.cond:
                        snap.update(
                            published=publisher.published,
                            warmups=publisher.warmups,
                            last_seq=publisher.seq,
                            publishing=publisher.busy or bool(publisher.jobs),
                        )
                    peerlib.emit("stats", tag=cmd.get("tag"), **snap)
                elif c == "reset":
                    with counters.lock:
                        counters.reset()
                    peerlib.emit("reset", tag=cmd.get("tag"))
                elif c == "config":
                    with policy.lock:
                        policy.delay = float(cmd.get("reply_delay_ms", 0)) / 1000.0
                        policy.tries = int(cmd.get("tries", 0))
                        policy.drop = bool(cmd.get("drop", False))
                    peerlib.emit("config", tag=cmd.get("tag"))
                elif c == "quit":
                    reader.eof = True
                    break
                else:
                    peerlib.emit("error", error="unknown cmd %r" % c)
    finally:
        stop.set()
        publisher.cancel.set()
        for th in threads:
            th.join(5)
        router.close(0)
        ctx.term()
        peerlib.emit("bye")
    return 0


def _wild(ep):
    # zmq's wildcard port is '*'; the harness says 0 for "pick one".
    return ep[: -len(":0")] + ":*" if ep.endswith(":0") else ep


def _port(ep):
    return int(ep.rsplit(":", 1)[1])


if __name__ == "__main__":
    sys.exit(main())
