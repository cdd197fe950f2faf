"""Real libzmq peers (Debian's python3-zmq) for internal/zmtp's tests.

usage: libzmq_peer.py MODE ENDPOINT [options]; prints one JSON line with the result.
  sub ENDPOINT --subs S1,S2|'' --none --idle SECONDS --expect N   count messages per first frame
  req ENDPOINT --clients N --rounds K --identity ID     N REQ sockets, K request rounds each
  dealer ENDPOINT --identity ID --rounds K              DEALER with an identity
  heartbeat ENDPOINT --ivl MS --sleep S                 REQ with ZMQ_HEARTBEAT_IVL, two requests S apart
"""
import argparse, json, os, sys, time, zmq

def out(**kw):
    print(json.dumps(kw), flush=True)

def sub(a, ctx):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 100000)
    s.connect(a.endpoint)
    if not a.none:
        for t in a.subs.split(",") if a.subs else [""]:
            s.setsockopt(zmq.SUBSCRIBE, t.encode())
    out(event="ready")
    counts, frames_bad, total = {}, 0, 0
    deadline = time.time() + a.max
    last = time.time()
    unsubbed = False
    while time.time() < deadline:
        # With --expect, a slow test (CI under load) cannot end the count early:
        # it runs until that many arrived, then --grace more to catch extras.
        quiet = time.time() - last
        if a.expect and total >= a.expect and quiet >= a.grace:
            break
        if not a.expect and quiet >= a.idle:
            break
        if s.poll(50):
            m = s.recv_multipart()
            last = time.time()
            total += 1
            k = m[0].decode(errors="replace")
            counts[k] = counts.get(k, 0) + 1
            if len(m) != 2 or not m[1].startswith(m[0]):
                frames_bad += 1
            if a.unsub_after and total == a.unsub_after and not unsubbed:
                for t in a.subs.split(","):
                    s.setsockopt(zmq.UNSUBSCRIBE, t.encode())
                unsubbed = True
                out(event="unsubscribed")
    out(event="done", counts=counts, total=total, bad=frames_bad)

def req(a, ctx):
    socks = []
    for i in range(a.clients):
        r = ctx.socket(zmq.REQ)
        r.setsockopt(zmq.LINGER, 0)
        if a.identity:
            r.setsockopt(zmq.IDENTITY, (a.identity if a.clients == 1 else "%s-%d" % (a.identity, i)).encode())
        r.connect(a.endpoint)
        socks.append(r)
    poller = zmq.Poller()
    for r in socks:
        poller.register(r, zmq.POLLIN)
    ok = bad = 0
    lat = []
    t0 = time.time()
    for rnd in range(a.rounds):
        sent = {}
        for i, r in enumerate(socks):
            body = b"req-%d-%d" % (i, rnd) + b"x" * a.size
            sent[r] = (body, time.time())
            r.send(body)
        pending = set(socks)
        deadline = time.time() + 20
        while pending and time.time() < deadline:
            for r, _ in poller.poll(100):
                rep = r.recv()
                body, ts = sent[r]
                lat.append(time.time() - ts)
                if rep == b"ok:" + body:
                    ok += 1
                else:
                    bad += 1
                pending.discard(r)
        if pending:
            break
    elapsed = time.time() - t0
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] * 1000 if lat else 0
    out(event="done", ok=ok, bad=bad, elapsed=elapsed, p50=p(0.5), p99=p(0.99))

def dealer(a, ctx):
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    if a.identity:
        d.setsockopt(zmq.IDENTITY, a.identity.encode())
    d.connect(a.endpoint)
    ok = 0
    for i in range(a.rounds):
        body = b"dealer-%d" % i
        d.send_multipart([b"", body])
        if d.poll(5000):
            m = d.recv_multipart()
            if m == [b"", b"ok:" + body]:
                ok += 1
    out(event="done", ok=ok)
    if a.hold:
        time.sleep(a.hold)

def heartbeat(a, ctx):
    r = ctx.socket(zmq.REQ)
    r.setsockopt(zmq.LINGER, 0)
    r.setsockopt(zmq.HEARTBEAT_IVL, a.ivl)
    r.setsockopt(zmq.HEARTBEAT_TIMEOUT, a.ivl * 3)
    r.connect(a.endpoint)
    ok = 0
    for i in range(2):
        r.send(b"hb-%d" % i)
        if r.poll(5000) and r.recv() == b"ok:hb-%d" % i:
            ok += 1
        if i == 0:
            time.sleep(a.sleep)
    out(event="done", ok=ok)

p = argparse.ArgumentParser()
p.add_argument("mode")
p.add_argument("endpoint")
p.add_argument("--subs", default="")
p.add_argument("--none", action="store_true")
p.add_argument("--idle", type=float, default=1.5)
p.add_argument("--expect", type=int, default=0, help="sub: count until this many arrived (then --grace), not until --idle")
p.add_argument("--grace", type=float, default=0.3)
p.add_argument("--max", type=float, default=20)
p.add_argument("--unsub-after", type=int, default=0)
p.add_argument("--clients", type=int, default=1)
p.add_argument("--rounds", type=int, default=1)
p.add_argument("--size", type=int, default=0)
p.add_argument("--identity", default="")
p.add_argument("--hold", type=float, default=0)
p.add_argument("--ivl", type=int, default=100)
p.add_argument("--sleep", type=float, default=1.0)
a = p.parse_args()
ctx = zmq.Context()
{"sub": sub, "req": req, "dealer": dealer, "heartbeat": heartbeat}[a.mode](a, ctx)
ctx.destroy(linger=0)
