"""libzmq (pyzmq) sides of the ZMTP benchmark; one JSON line of results on stdout.

  router EP                         echo ROUTER server (libzmq baseline), runs until stdin closes
  pub EP --subs N --count C --size S  PUB server: waits for N subscribers' warm-up, then publishes C messages
  req EP --clients N --seconds D    N REQ sockets in lock step for D seconds; counts round trips
  sub EP --clients N --idle S       N SUB sockets (subscribed to everything); counts until S s idle
"""
import argparse, json, sys, threading, time, zmq

p = argparse.ArgumentParser()
p.add_argument("mode"); p.add_argument("ep")
p.add_argument("--clients", type=int, default=1)
p.add_argument("--seconds", type=float, default=3)
p.add_argument("--subs", type=int, default=1)
p.add_argument("--count", type=int, default=10000)
p.add_argument("--size", type=int, default=1024)
p.add_argument("--idle", type=float, default=1.0)
a = p.parse_args()
ctx = zmq.Context()

def out(**kw):
    print(json.dumps(kw), flush=True)

if a.mode == "router":
    s = ctx.socket(zmq.ROUTER); s.bind(a.ep)
    out(event="ready")
    threading.Thread(target=lambda: (sys.stdin.read(), ctx.term()), daemon=True).start()
    try:
        while True:
            s.send_multipart(s.recv_multipart(copy=False), copy=False)
    except zmq.ContextTerminated:
        pass
elif a.mode == "pub":
    s = ctx.socket(zmq.PUB); s.setsockopt(zmq.SNDHWM, 0); s.bind(a.ep)
    out(event="ready")
    msg = b"x" * a.size
    time.sleep(1.0)  # let subscribers connect (they report themselves ready to the Go side)
    sys.stdin.readline()  # the Go side says go
    t0 = time.time()
    for i in range(a.count):
        s.send(msg)
    out(event="done", elapsed=time.time() - t0)
    sys.stdin.read()
elif a.mode == "req":
    socks = []
    for i in range(a.clients):
        r = ctx.socket(zmq.REQ); r.setsockopt(zmq.LINGER, 0); r.connect(a.ep); socks.append(r)
    poller = zmq.Poller()
    for r in socks:
        poller.register(r, zmq.POLLIN)
    body = b"q" * 100
    for r in socks:
        r.send(body)
    n, t0 = 0, time.time()
    end = t0 + a.seconds
    while time.time() < end:
        for r, _ in poller.poll(100):
            r.recv(); n += 1; r.send(body)
    out(event="done", count=n, elapsed=time.time() - t0)
    ctx.destroy(linger=0)
elif a.mode == "sub":
    socks = []
    for i in range(a.clients):
        s = ctx.socket(zmq.SUB); s.setsockopt(zmq.RCVHWM, 0); s.setsockopt(zmq.SUBSCRIBE, b""); s.connect(a.ep); socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    out(event="ready")
    n, first, last = 0, None, time.time()
    while time.time() - last < a.idle or first is None:
        ev = poller.poll(50)
        for s, _ in ev:
            while True:
                try:
                    s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                n += 1
                last = time.time()
                if first is None:
                    first = last
        if first is None and time.time() - last > 30:
            break
    out(event="done", count=n, elapsed=(last - first) if first else 0)
    ctx.destroy(linger=0)
