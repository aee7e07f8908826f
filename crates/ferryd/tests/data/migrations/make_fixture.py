#!/usr/bin/env python3
"""Makes one old-schema fixture: runs an OLD ferryd against a ferry-testserver, creates tasks
through the protocol (as an application would), stops the daemon with SIGTERM and copies
what it left into OUT: ferry.db (WAL checkpointed, VACUUMed), staging/*.part, and from
schema 2 on resume/*.part and resume.key.

usage: make_fixture.py FERRYD TESTSERVER SCHEMA_VERSION OUT

FERRYD is the ferryd binary built from the old commit; TESTSERVER any ferry-testserver
binary. SCHEMA_VERSION decides which requests that ferryd knows: 2 and later have
cancel_with_resume_data, 3 and later groups. See README.md.

Session `app` (never acknowledged, so every journaled event stays in the journal):
  done    /bytes/5000?seed=11                   succeeded
  failed  /bytes/100?status=404                 failed (404)
  paused  /bytes/24000?seed=12&rate=2048&filename=paused.bin
                                                suspended with about 6 KB and a checkpoint
  idle    /bytes/1000?seed=14  start=false      suspended, never started (group `batch`, v3+)
  kept    /bytes/24000?seed=13&rate=2048&filename=kept.bin
                                                cancelled with resume data (v2+)
Session `other` (all acknowledged):
  other   /bytes/3000?seed=15                   succeeded
"""
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time


def send(sock, message):
    body = json.dumps(message).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)


def recv(sock):
    def exact(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError("the daemon closed the connection")
            data += chunk
        return data

    (length,) = struct.unpack(">I", exact(4))
    return json.loads(exact(length))


class Client:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.next_id = 1
        self.events = []
        send(self.sock, {"frame": "hello", "protocol": 1, "client": "make_fixture.py"})
        welcome = recv(self.sock)
        assert welcome["frame"] == "welcome", welcome

    def request(self, request):
        rid = self.next_id
        self.next_id += 1
        send(self.sock, {"frame": "request", "id": rid, "request": request})
        while True:
            frame = recv(self.sock)
            if frame["frame"] == "event":
                self.events.append(frame)
            elif frame.get("id") == rid:
                if frame["frame"] == "error":
                    raise RuntimeError(f"{request}: {frame['error']}")
                return frame["response"]

    def task(self, tid):
        tasks = self.request({"type": "list_tasks"})["tasks"]
        return next(t for t in tasks if t["id"] == tid)


def state_name(task):
    s = task["state"]
    if s == "running":
        return task["phase"]
    if s == "completed":
        return task["outcome"]
    return s


def wait(what, condition, patience=60):
    deadline = time.time() + patience
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def main():
    ferryd, testserver, version, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    work = tempfile.mkdtemp(prefix="ferry-fixture-")
    home = os.path.join(work, "home")
    dest = os.path.join(work, "out")
    os.makedirs(dest)
    server = subprocess.Popen([testserver], stdout=subprocess.PIPE, text=True)
    base = server.stdout.readline().split()[-1].rstrip("/")
    env = dict(os.environ, FERRY_HOME=home, FERRY_CHECKPOINT_MS="100", FERRY_LOG="warn")
    daemon = subprocess.Popen([ferryd], env=env, stdin=subprocess.DEVNULL)
    sock_path = os.path.join(home, "ferryd.sock")
    wait("the daemon's socket", lambda: os.path.exists(sock_path))
    time.sleep(0.2)

    def req(path, name, tag, **extra):
        # Tasks the tests continue go to the inbox (of whatever home the fixture is copied
        # to): a destination here would name a folder that is gone by then.
        r = {"url": base + path, "tag": tag}
        if name is not None:
            r["destination"] = os.path.join(dest, name)
        r.update(extra)
        return r

    def create(c, session, request):
        return c.request({"type": "create_download", "session": session,
                          "request": request})["task"]["id"]

    # The acknowledged session first, so its task has the lowest id.
    other = Client(sock_path)
    other.request({"type": "attach", "session": "other"})
    tid = create(other, "other", req("/bytes/3000?seed=15", "other.bin", "other"))
    wait("other", lambda: state_name(other.task(tid)) == "succeeded")
    wait("other's completed event",
         lambda: other.request({"type": "list_tasks"}) and any(
             e["event"]["type"] == "completed" for e in other.events))
    last = max(e["seq"] for e in other.events if e.get("seq") is not None)
    other.request({"type": "ack", "session": "other", "seq": last})
    other.request({"type": "detach", "session": "other"})

    app = Client(sock_path)
    app.request({"type": "attach", "session": "app"})
    ids = {}
    ids["done"] = create(app, "app", req("/bytes/5000?seed=11", "done.bin", "done"))
    wait("done", lambda: state_name(app.task(ids["done"])) == "succeeded")
    ids["failed"] = create(app, "app", req("/bytes/100?status=404", "failed.bin", "failed"))
    wait("failed", lambda: state_name(app.task(ids["failed"])) == "failed")

    ids["paused"] = create(app, "app", req("/bytes/24000?seed=12&rate=2048&filename=paused.bin",
                                           None, "paused", connections=1))
    wait("paused bytes", lambda: app.task(ids["paused"])["bytes_done"] >= 6000)
    app.request({"type": "suspend", "task": ids["paused"]})
    wait("paused", lambda: state_name(app.task(ids["paused"])) == "suspended")

    idle = req("/bytes/1000?seed=14", "idle.bin", "idle", start=False)
    if version >= 3:
        idle["group"] = "batch"
    ids["idle"] = create(app, "app", idle)

    if version >= 2:
        ids["kept"] = create(app, "app", req("/bytes/24000?seed=13&rate=2048&filename=kept.bin",
                                             None, "kept", connections=1))
        wait("kept bytes", lambda: app.task(ids["kept"])["bytes_done"] >= 6000)
        app.request({"type": "cancel_with_resume_data", "task": ids["kept"]})
        wait("kept", lambda: state_name(app.task(ids["kept"])) == "cancelled")
    time.sleep(0.5)  # the last checkpoints and events reach the store

    tasks = app.request({"type": "list_tasks"})["tasks"]
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, "ferryd did not stop cleanly"
    server.send_signal(signal.SIGTERM)
    server.wait(30)

    db = os.path.join(home, "ferry.db")
    wal = db + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        print(f"note: {wal} has {os.path.getsize(wal)} bytes; checkpointing it", file=sys.stderr)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    got = conn.execute("PRAGMA user_version").fetchone()[0]
    assert got == version, f"the database has schema {got}, not {version}"
    conn.close()

    os.makedirs(out, exist_ok=True)
    shutil.copyfile(db, os.path.join(out, "ferry.db"))
    conn = sqlite3.connect(os.path.join(out, "ferry.db"))
    conn.execute("VACUUM")
    conn.close()
    for extra in ("-wal", "-shm"):
        p = os.path.join(out, "ferry.db" + extra)
        if os.path.exists(p):
            os.remove(p)
    # Bytes of unfinished tasks, and (schema 2 on) the kept bytes of cancelled ones with the
    # key that signs their resume data.
    for folder in ("staging", "resume"):
        src = os.path.join(home, folder)
        if os.path.isdir(src) and os.listdir(src):
            os.makedirs(os.path.join(out, folder), exist_ok=True)
            for name in os.listdir(src):
                shutil.copyfile(os.path.join(src, name), os.path.join(out, folder, name))
    if os.path.exists(os.path.join(home, "resume.key")):
        shutil.copyfile(os.path.join(home, "resume.key"), os.path.join(out, "resume.key"))
    for t in tasks:
        print(t["id"], t.get("tag"), state_name(t), t["bytes_done"], t.get("resume_data") is not None)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
