"""confluent-kafka-python's AIOProducer, run by `kbatch bench producer` as the Python peer.

Same workload and librdkafka settings as the Rust contenders (passed in as JSON): every
per-record future is awaited, at most `window` outstanding, oldest first. AIOProducer keeps its
own defaults (batch_size=1000, buffer_timeout=1.0), as its users get them. Prints one JSON line.
"""
import asyncio
import json
import sys
import time
from collections import deque

from confluent_kafka.aio import AIOProducer


async def main() -> None:
    args = json.loads(sys.argv[1])
    producer = AIOProducer(dict(args["config"]))
    topic, records, window = args["topic"], args["records"], args["window"]
    value = b"x" * args["size"]
    keys = [f"key-{k}".encode() for k in range(args["keys"])]
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
    cpu_start = time.process_time()
    for i in range(records):
        pending.append(await producer.produce(topic, value=value, key=keys[i % len(keys)]))
        while len(pending) > window:
            await settle(pending.popleft())
    await producer.flush()
    while pending:
        await settle(pending.popleft())
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    await producer.close()
    print(json.dumps({"delivered": delivered, "failed": failed, "seconds": seconds, "cpu_seconds": cpu_seconds}))


asyncio.run(main())
