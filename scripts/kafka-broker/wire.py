"""The few Kafka wire-protocol questions scripts/kafka asks, over plain sockets.

Python stdlib only, so that asking does not start a JVM (seconds on 2 cores):

  ready ADDR [--node-id N] [--expect-brokers K] [--timeout S] [--pid PID]
      wait until ADDR answers Metadata and lists at least K brokers (and node N
      among them: a broker lists only registered, unfenced brokers, so a node
      that lists itself is ready for produce/consume); exit 1 on timeout or
      once PID has died
  leader ADDRS TOPIC PARTITION
      print the node id leading TOPIC's PARTITION (-1 while leaderless)
  coordinator ADDRS GROUP
      print the node id of GROUP's coordinator

ADDRS is a comma-separated host:port list; the first that answers is used.
"""

import argparse
import os
import socket
import struct
import sys
import time

CLIENT = b"kbatch-probe"


class Reader:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, fmt):
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.buf[self.pos : self.pos + n].decode()
        self.pos += n
        return s

    def array(self, item):
        return [item() for _ in range(self.take(">i"))]


def request(addr, api_key, version, body, timeout=2.0):
    """One request with a v1 header; returns the response body after the correlation id."""
    host, port = addr.rsplit(":", 1)
    corr = 7
    req = struct.pack(">hhih", api_key, version, corr, len(CLIENT)) + CLIENT + body
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(req)) + req)
        size = struct.unpack(">i", recv_exact(s, 4))[0]
        resp = recv_exact(s, size)
    if struct.unpack_from(">i", resp)[0] != corr:
        raise ConnectionError("correlation id mismatch")
    return Reader(resp[4:])


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def metadata(addr, topics):
    """Metadata v4: (broker ids, {topic: {partition: leader}}); topics=[] asks for none."""
    body = struct.pack(">i", len(topics))
    for t in topics:
        body += struct.pack(">h", len(t)) + t.encode()
    body += struct.pack(">b", 0)  # allow_auto_topic_creation = false
    r = request(addr, 3, 4, body)
    r.take(">i")  # throttle_time_ms

    def broker():
        node = r.take(">i")
        r.string(), r.take(">i"), r.string()  # host, port, rack
        return node

    brokers = r.array(broker)
    r.string(), r.take(">i")  # cluster_id, controller_id

    def partition():
        err, idx, leader = r.take(">h"), r.take(">i"), r.take(">i")
        r.array(lambda: r.take(">i")), r.array(lambda: r.take(">i"))  # replicas, isr
        return idx, (err, leader)

    def topic():
        err, name, _internal = r.take(">h"), r.string(), r.take(">b")
        return name, (err, dict(r.array(partition)))

    return brokers, dict(r.array(topic))


def find_coordinator(addr, group):
    """FindCoordinator v2 (key type 0 = group): (error code, node id)."""
    key = group.encode()
    r = request(addr, 10, 2, struct.pack(">h", len(key)) + key + struct.pack(">b", 0))
    r.take(">i")  # throttle_time_ms
    err = r.take(">h")
    r.string()  # error_message
    return err, r.take(">i")


def first_answer(addrs, ask):
    last = None
    for addr in addrs.split(","):
        try:
            return ask(addr.strip())
        except (OSError, struct.error, ConnectionError) as e:
            last = e
    sys.exit("no broker of %s answered: %s" % (addrs, last))


def cmd_ready(a):
    deadline = time.monotonic() + a.timeout
    while True:
        try:
            brokers, _ = metadata(a.addr, [])
            if len(brokers) >= a.expect_brokers and (a.node_id is None or a.node_id in brokers):
                return 0
        except (OSError, struct.error, ConnectionError):
            pass
        if a.pid:
            try:
                os.kill(a.pid, 0)
            except OSError:
                print("broker process %s exited" % a.pid, file=sys.stderr)
                return 1
        if time.monotonic() >= deadline:
            return 1
        time.sleep(0.1)


def cmd_leader(a):
    _, topics = first_answer(a.addrs, lambda addr: metadata(addr, [a.topic]))
    err, parts = topics.get(a.topic, (3, {}))
    if err != 0:
        sys.exit("topic %s: error code %d" % (a.topic, err))
    if a.partition not in parts:
        sys.exit("topic %s has no partition %d (it has %d)" % (a.topic, a.partition, len(parts)))
    print(parts[a.partition][1])
    return 0


def cmd_coordinator(a):
    # Retry while the coordinator is being elected or loaded (error 15, 14).
    deadline = time.monotonic() + a.timeout
    while True:
        err, node = first_answer(a.addrs, lambda addr: find_coordinator(addr, a.group))
        if err == 0:
            print(node)
            return 0
        if time.monotonic() >= deadline:
            sys.exit("no coordinator for group %s: error code %d" % (a.group, err))
        time.sleep(0.2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("ready")
    r.add_argument("addr")
    r.add_argument("--node-id", type=int)
    r.add_argument("--expect-brokers", type=int, default=1)
    r.add_argument("--timeout", type=float, default=90)
    r.add_argument("--pid", type=int)
    r.set_defaults(run=cmd_ready)
    l = sub.add_parser("leader")
    l.add_argument("addrs")
    l.add_argument("topic")
    l.add_argument("partition", type=int)
    l.set_defaults(run=cmd_leader)
    c = sub.add_parser("coordinator")
    c.add_argument("addrs")
    c.add_argument("group")
    c.add_argument("--timeout", type=float, default=30)
    c.set_defaults(run=cmd_coordinator)
    a = p.parse_args()
    sys.exit(a.run(a))


if __name__ == "__main__":
    main()
