#!/usr/bin/env python3
"""Benchmark client for ferryd (docs/PROTOCOL.md), used by bench/daemon.sh.

  daemon_client.py wait    --socket S [--timeout SECS]
      poll until the daemon answers hello on S (exit 1 on timeout)
  daemon_client.py many    --socket S --urls LIST --out DIR [--session bench] [--batch 1000]
      attach (max_concurrent 16, max_per_host 16), create one download per URL in LIST
      (destination DIR/fNNNN, 1 connection, started), wait for every `completed` event, fail
      unless all succeeded, ack, exit
  daemon_client.py enqueue --socket S --count N [--session bench] [--batch 2000]
      create N suspended tasks (start: false) with create_downloads, in batches
  daemon_client.py list    --socket S [--session bench] [--expect N]
      list every task (list_tasks, following `next`), print count and time
  daemon_client.py status  --socket S

Timings and counts go to stderr as `key=value` words (and stdout for enqueue/list), so the
script can pick them up. The framing code is the one of crates/ferryd/tests/it/client.py.
"""
import argparse
import json
import socket
import struct
import sys
import time


# --- framing (from crates/ferryd/tests/it/client.py) ------------------------------------
def send(sock, message):
    body = json.dumps(message).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv(sock):
    prefix = recv_exact(sock, 4)
    if prefix is None:
        return None
    (length,) = struct.unpack(">I", prefix)
    body = recv_exact(sock, length)
    if body is None:
        return None
    return json.loads(body)


# --- a small connection helper ------------------------------------------------------------
class Conn:
    def __init__(self, path, client="bench"):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.next_id = 1
        self.on_event = None  # called with every event frame
        send(self.sock, {"frame": "hello", "protocol": 1, "client": client})
        frame = self.read()
        if frame.get("frame") != "welcome":
            die(f"expected welcome, got {frame}")

    def read(self):
        frame = recv(self.sock)
        if frame is None:
            die("the daemon closed the connection")
        return frame

    def send_request(self, request):
        rid = self.next_id
        self.next_id += 1
        send(self.sock, {"frame": "request", "id": rid, "request": request})
        return rid

    def wait_response(self, rid):
        """Reads frames until the answer to `rid`; events on the way go to on_event."""
        while True:
            frame = self.read()
            kind = frame.get("frame")
            if kind == "event":
                if self.on_event:
                    self.on_event(frame)
            elif kind == "response" and frame.get("id") == rid:
                return frame["response"]
            elif kind == "error":
                die(f"error answer: {json.dumps(frame)}")
            elif kind == "response":
                die(f"unexpected response id {frame.get('id')} (waiting for {rid})")
            else:
                die(f"unexpected frame {json.dumps(frame)[:500]}")

    def call(self, request):
        return self.wait_response(self.send_request(request))


def die(msg):
    print(f"daemon_client: {msg}", file=sys.stderr)
    sys.exit(1)


# --- subcommands ----------------------------------------------------------------------------
def cmd_wait(a):
    deadline = time.monotonic() + a.timeout
    while True:
        try:
            c = Conn(a.socket, "bench-wait")
            c.sock.close()
            return
        except (FileNotFoundError, ConnectionRefusedError, OSError):
            if time.monotonic() > deadline:
                die(f"no daemon on {a.socket} after {a.timeout} s")
            time.sleep(0.05)


def cmd_many(a):
    t0 = time.monotonic()
    urls = [l.strip() for l in open(a.urls) if l.strip()]
    c = Conn(a.socket)
    completed = {}  # task id -> outcome
    max_seq = [0]

    def on_event(frame):
        seq = frame.get("seq")
        if seq is not None and seq > max_seq[0]:
            max_seq[0] = seq
        ev = frame.get("event", {})
        if ev.get("type") == "completed":
            completed[frame.get("task")] = ev.get("outcome")

    c.on_event = on_event
    r = c.call({"type": "attach", "session": a.session,
                "config": {"max_concurrent": 16, "max_per_host": 16}})
    if r.get("type") != "attached":
        die(f"attach answered {r}")
    if r.get("backlog"):
        die(f"session {a.session} has a backlog of {r['backlog']} events; use a fresh session")
    t_attached = time.monotonic()
    ids = []
    for start in range(0, len(urls), a.batch):
        reqs = [{"url": u, "destination": f"{a.out}/f{i:04d}", "connections": 1, "start": True}
                for i, u in enumerate(urls[start:start + a.batch], start)]
        r = c.call({"type": "create_downloads", "session": a.session, "requests": reqs})
        if r.get("type") != "created" or len(r.get("ids", [])) != len(reqs):
            die(f"create_downloads answered {json.dumps(r)[:500]}")
        ids.extend(r["ids"])
    t_created = time.monotonic()
    wanted = set(ids)
    while not wanted <= completed.keys():
        frame = c.read()
        if frame.get("frame") == "event":
            on_event(frame)
        else:
            die(f"unexpected frame {json.dumps(frame)[:500]}")
    t_done = time.monotonic()
    bad = {t: o for t, o in completed.items() if t in wanted and o.get("result") != "succeeded"}
    if bad:
        first = next(iter(bad.items()))
        die(f"{len(bad)} of {len(ids)} downloads did not succeed, e.g. task {first[0]}: {first[1]}")
    c.call({"type": "ack", "session": a.session, "seq": max_seq[0]})
    c.sock.close()
    t_end = time.monotonic()
    print(f"tasks={len(ids)} attach_s={t_attached - t0:.3f} create_s={t_created - t_attached:.3f} "
          f"transfer_s={t_done - t_created:.3f} total_s={t_end - t0:.3f}", file=sys.stderr)


def cmd_enqueue(a):
    c = Conn(a.socket)
    t0 = time.monotonic()
    created = 0
    worst = 0.0
    for start in range(0, a.count, a.batch):
        n = min(a.batch, a.count - start)
        reqs = [{"url": f"http://127.0.0.1:9/x/{i}", "destination": f"/tmp/never/{i}",
                 "start": False} for i in range(start, start + n)]
        tb = time.monotonic()
        r = c.call({"type": "create_downloads", "session": a.session, "requests": reqs})
        worst = max(worst, time.monotonic() - tb)
        if r.get("type") != "created" or len(r.get("ids", [])) != n:
            die(f"create_downloads answered {json.dumps(r)[:500]}")
        created += n
    dt = time.monotonic() - t0
    print(f"created={created} enqueue_s={dt:.3f} per_s={created / dt:.0f} "
          f"slowest_batch_s={worst:.3f}")


def cmd_list(a):
    c = Conn(a.socket)
    t0 = time.monotonic()
    after = None
    count = pages = 0
    states = {}
    while True:
        req = {"type": "list_tasks", "session": a.session}
        if after is not None:
            req["after"] = after
        r = c.call(req)
        if r.get("type") != "tasks":
            die(f"list_tasks answered {json.dumps(r)[:500]}")
        pages += 1
        count += len(r["tasks"])
        for t in r["tasks"]:
            states[t.get("state")] = states.get(t.get("state"), 0) + 1
        after = r.get("next")
        if after is None:
            break
    dt = time.monotonic() - t0
    st = ",".join(f"{k}:{v}" for k, v in sorted(states.items()))
    print(f"count={count} pages={pages} list_s={dt:.3f} states={st}")
    if a.expect is not None and count != a.expect:
        die(f"listed {count} tasks, expected {a.expect}")


def cmd_status(a):
    c = Conn(a.socket)
    print(json.dumps(c.call({"type": "status"})))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("--socket", required=True)
    w.add_argument("--timeout", type=float, default=30)
    m = sub.add_parser("many")
    m.add_argument("--socket", required=True)
    m.add_argument("--urls", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--session", default="bench")
    m.add_argument("--batch", type=int, default=1000)
    e = sub.add_parser("enqueue")
    e.add_argument("--socket", required=True)
    e.add_argument("--count", type=int, required=True)
    e.add_argument("--session", default="bench")
    e.add_argument("--batch", type=int, default=2000)
    l = sub.add_parser("list")
    l.add_argument("--socket", required=True)
    l.add_argument("--session", default="bench")
    l.add_argument("--expect", type=int)
    s = sub.add_parser("status")
    s.add_argument("--socket", required=True)
    a = p.parse_args()
    {"wait": cmd_wait, "many": cmd_many, "enqueue": cmd_enqueue, "list": cmd_list,
     "status": cmd_status}[a.cmd](a)


if __name__ == "__main__":
    main()
