#!/usr/bin/env python3
"""A ferry protocol client written from docs/PROTOCOL.md alone, used by the daemon's tests
to act as an application in another process (killed with SIGKILL, or run as another uid).

usage: client.py SOCKET SESSION [URL DESTINATION | upload URL FILE RATE]
Attaches to SESSION, creates a download of URL to DESTINATION, or an upload of FILE to URL
at RATE bytes per second, if given, prints every frame it receives as one JSON line, and
keeps reading until the daemon closes the connection.
"""
import json
import socket
import struct
import sys


def send(sock, message):
    body = json.dumps(message).encode()
    try:
        sock.sendall(struct.pack(">I", len(body)) + body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon closed the connection; what it said first is still readable


def recv(sock):
    prefix = b""
    while len(prefix) < 4:
        chunk = sock.recv(4 - len(prefix))
        if not chunk:
            return None
        prefix += chunk
    (length,) = struct.unpack(">I", prefix)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return json.loads(body)


def main():
    path, session = sys.argv[1], sys.argv[2]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    send(sock, {"frame": "hello", "protocol": 1, "client": "client.py"})
    send(sock, {"frame": "request", "id": 1,
                "request": {"type": "attach", "session": session}})
    if len(sys.argv) > 6 and sys.argv[3] == "upload":
        send(sock, {"frame": "request", "id": 2,
                    "request": {"type": "create_upload", "session": session,
                                "request": {"url": sys.argv[4],
                                            "body": {"type": "file", "path": sys.argv[5]},
                                            "rate_limit": int(sys.argv[6])}}})
    elif len(sys.argv) > 4:
        send(sock, {"frame": "request", "id": 2,
                    "request": {"type": "create_download", "session": session,
                                "request": {"url": sys.argv[3], "destination": sys.argv[4]}}})
    while True:
        frame = recv(sock)
        if frame is None:
            return
        print(json.dumps(frame), flush=True)


if __name__ == "__main__":
    main()
