"""confluent-kafka-python's producers, run by `kbatch bench producer` as the Python peers.

Same workload and librdkafka settings as the Rust contenders (passed in as JSON), the same
in-flight window:
- "aio": `AIOProducer`, every per-record future awaited, oldest first, at most `window`
  outstanding (the oldest is awaited before a produce that would exceed it). AIOProducer keeps
  its own defaults (batch_size=1000, buffer_timeout=1.0), as its users get them.
- "producer": the plain `Producer` with one delivery callback, `poll(0)` after every
  `produce` as confluent-kafka's documentation does, and `poll(1)` (until a delivery report is
  served) on BufferError; its window is librdkafka's queue.buffering.max.messages.

"seconds" runs from the first produce until every delivery is confirmed, as for the Rust
contenders. "cpu_seconds" (this process, all threads) spans the client's whole life, from
construction to close, as the Rust contenders' CPU time does; interpreter start-up and imports
are left out.

With "mode": "settings" nothing is produced: the client is made with debug=conf and the lines
librdkafka logs about its settings are printed, for the bench to compare with the others'.
Prints one JSON line.
"""
import asyncio
import json
import logging
import sys
import time
from collections import deque

from confluent_kafka import Producer
from confluent_kafka.aio import AIOProducer


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def window_of(client: str, args: dict) -> int:
    """The in-flight bound the client really runs with: librdkafka's queue for the callback
    producer (its default when unset), the futures' bound for AIOProducer."""
    if client == "producer":
        return int(args["config"].get("queue.buffering.max.messages", 100000))
    return args["window"]


def conf_logger() -> tuple:
    handler = Lines()
    logger = logging.getLogger("kbatch-bench-conf")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, handler


def complete(lines: list) -> bool:
    return any("Default topic configuration" in line for line in lines) and any(
        "request.required.acks" in line for line in lines
    )


def settings_producer(args: dict) -> dict:
    logger, handler = conf_logger()
    p = Producer(dict(args["config"], debug="conf", logger=logger))
    deadline = time.monotonic() + 5
    while not complete(handler.lines) and time.monotonic() < deadline:
        p.poll(0.05)
    return {"lines": handler.lines, "window": window_of("producer", args)}


async def settings_aio(args: dict) -> dict:
    logger, handler = conf_logger()
    p = AIOProducer(dict(args["config"], debug="conf", logger=logger))
    deadline = time.monotonic() + 5
    while not complete(handler.lines) and time.monotonic() < deadline:
        await p.poll(0.05)
        await asyncio.sleep(0.01)
    await p.close()
    return {"lines": handler.lines, "window": window_of("aio", args)}


def run_producer(args: dict) -> dict:
    counts = [0, 0]  # delivered, failed

    def on_delivery(err, _msg) -> None:
        counts[err is not None] += 1

    topic, records = args["topic"], args["records"]
    value = b"x" * args["size"]
    keys = [f"key-{k}".encode() for k in range(args["keys"])]
    nkeys = len(keys)
    cpu_start = time.process_time()
    p = Producer(dict(args["config"], on_delivery=on_delivery))
    produce, poll = p.produce, p.poll
    start = time.perf_counter()
    for i in range(records):
        while True:
            try:
                produce(topic, value, keys[i % nkeys])
                break
            except BufferError:
                poll(1)
        poll(0)
    left = p.flush(300)
    seconds = time.perf_counter() - start
    # The last reference: rd_kafka_destroy runs here, as the Rust clients' drop does.
    del produce, poll, p
    cpu_seconds = time.process_time() - cpu_start
    return {"delivered": counts[0], "failed": counts[1] + left, "seconds": seconds,
            "cpu_seconds": cpu_seconds, "window": window_of("producer", args)}


async def run_aio(args: dict) -> dict:
    topic, records, window = args["topic"], args["records"], window_of("aio", args)
    value = b"x" * args["size"]
    keys = [f"key-{k}".encode() for k in range(args["keys"])]
    cpu_start = time.process_time()
    producer = AIOProducer(dict(args["config"]))
    delivered = failed = 0
    pending: deque = deque()

    async def settle(fut) -> None:
        nonlocal delivered, failed
        try:
            await fut
            delivered += 1
        except Exception:  # noqa: BLE001 - any delivery failure counts as failed
            failed += 1

    start = time.perf_counter()
    for i in range(records):
        while len(pending) >= window:
            await settle(pending.popleft())
        pending.append(await producer.produce(topic, value=value, key=keys[i % len(keys)]))
    await producer.flush()
    while pending:
        await settle(pending.popleft())
    seconds = time.perf_counter() - start
    await producer.close()
    del producer
    cpu_seconds = time.process_time() - cpu_start
    return {"delivered": delivered, "failed": failed, "seconds": seconds,
            "cpu_seconds": cpu_seconds, "window": window}


def main() -> None:
    args = json.loads(sys.argv[1])
    client, mode = args["client"], args.get("mode", "run")
    if client == "aio":
        out = asyncio.run(settings_aio(args) if mode == "settings" else run_aio(args))
    elif client == "producer":
        out = settings_producer(args) if mode == "settings" else run_producer(args)
    else:
        raise SystemExit(f"unknown client {client!r}: aio or producer")
    print(json.dumps(out))


main()
