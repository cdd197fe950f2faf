#!/usr/bin/python3
"""The old salt-broker pattern on real libzmq: the baseline salt-broker replaces.

SUB (connected to the master's publish port, subscribed to everything) -> PUB
(bound for the minions), and ROUTER (bound for the minions) <-> DEALER
(connected to the master's ret port), both with zmq.proxy. No replay, no
dedup: what the link drops is gone, which is what the benchmarks compare.

Control: {"cmd":"quit"} on stdin (or EOF); prints {"event":"ready"} once bound.
"""

import argparse
import os
import sys
import threading

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402


def run_proxy(ctx, front, back, name):
    try:
        zmq.proxy(front, back)
    except zmq.ContextTerminated:
        pass
    except zmq.ZMQError as exc:
        peerlib.log("%s proxy: %s" % (name, exc))
    finally:
        front.close(0)
        back.close(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--master", required=True)
    ap.add_argument("--pub-port", type=int, required=True)
    ap.add_argument("--ret-port", type=int, required=True)
    ap.add_argument("--bind", required=True, help="IP the minions use as master")
    ap.add_argument("--bind-pub-port", type=int, default=0, help="default: --pub-port")
    ap.add_argument("--bind-ret-port", type=int, default=0, help="default: --ret-port")
    ap.add_argument("--hwm", type=int, default=1000)
    args = ap.parse_args()
    bind_pub = args.bind_pub_port or args.pub_port
    bind_ret = args.bind_ret_port or args.ret_port

    ctx = zmq.Context(io_threads=1)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, args.hwm)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, args.hwm)
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    for s in (sub, pub, router, dealer):
        s.setsockopt(zmq.LINGER, 0)
    try:
        pub.bind("tcp://%s:%d" % (args.bind, bind_pub))
        router.bind("tcp://%s:%d" % (args.bind, bind_ret))
    except zmq.ZMQError as exc:
        peerlib.emit("error", error="bind: %s" % exc)
        for s in (sub, pub, router, dealer):
            s.close(0)
        ctx.term()
        return 2
    sub.connect("tcp://%s:%d" % (args.master, args.pub_port))
    dealer.connect("tcp://%s:%d" % (args.master, args.ret_port))

    threads = [
        threading.Thread(target=run_proxy, args=(ctx, sub, pub, "pub"), name="pub"),
        threading.Thread(target=run_proxy, args=(ctx, router, dealer, "req"), name="req"),
    ]
    for th in threads:
        th.start()
    peerlib.emit("ready", pub_port=bind_pub, ret_port=bind_ret, pid=os.getpid())
    reader = peerlib.LineReader()
    while not reader.eof:
        for line in reader.read_lines():
            cmd = peerlib.parse_cmd(line)
            if cmd is not None and cmd["cmd"] == "quit":
                reader.eof = True
                break
    # term() interrupts both proxies; each closes its own sockets, then term returns.
    ctx.term()
    for th in threads:
        th.join(5)
    peerlib.emit("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
