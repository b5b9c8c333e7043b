#!/usr/bin/env python3
"""A MessagePack-RPC client written the plain way with Debian's python3-msgpack over a raw socket.

usage: pipeline_client.py HOST:PORT MESSAGES_JSON

MESSAGES_JSON is a list; [msgid, method, params] is a request, [method, params] a notification.
Everything is sent at once, before any reply is read (pipelining). Each reply is printed as one JSON
line {"type", "msgid", "error", "result"} in the order it arrived.
"""
import json
import socket
import sys

import msgpack


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    messages = json.loads(sys.argv[2])
    out = bytearray()
    requests = 0
    for m in messages:
        if len(m) == 3:
            out += msgpack.packb([0, m[0], m[1], m[2]], use_bin_type=True)
            requests += 1
        else:
            out += msgpack.packb([2, m[0], m[1]], use_bin_type=True)
    sock = socket.create_connection((host, int(port)), timeout=20)
    sock.sendall(bytes(out))
    unpacker = msgpack.Unpacker(raw=False)
    replies = 0
    while replies < requests:
        data = sock.recv(65536)
        if not data:
            sys.exit("connection closed after %d of %d replies" % (replies, requests))
        unpacker.feed(data)
        for reply in unpacker:
            kind, msgid, error, result = reply
            print(json.dumps({"type": kind, "msgid": msgid, "error": error, "result": result}), flush=True)
            replies += 1
    sock.close()


if __name__ == "__main__":
    main()
