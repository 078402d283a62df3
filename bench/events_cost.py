"""Issue 15 item 4: what announcing a settled job on the events exchange costs the
consumer's main thread, per job (EventPublisher.settled against the real broker).

The publisher runs as in a consumer: its own channel on a connection, no confirms. The
exchange has one bound queue (a subscriber), which the broker fills; that is the
broker's work, not the consumer's. Rounds of 1 job (prefetch 1) and of 10 (a batch).
Prints the median CPU µs per event (user + system, time.process_time: a shared, loaded
machine slows the wall clock much more than this) over repeated runs: `settled` alone
(it only buffers the frames), and what the loop's next pump (process_data_events(0),
which writes them) costs more than a pump with nothing to write.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import pika

from gearqueue.config import ServiceSettings
from gearqueue.message import Envelope
from gearqueue.worker.events import EventPublisher
from gearqueue.worker.outcome import Outcome
from gearqueue.worker.settlement import Settled

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
EVENTS = 5000


def service() -> ServiceSettings:
    values: dict[str, Any] = {name: 0 for name in ServiceSettings.__dataclass_fields__}
    values.update(job_type="echo", queue="bench.echo_jobs", contract="gearqueue",
                  isolation="", queue_host="", queue_type="classic", fallback="none")
    return ServiceSettings(**values)


def jobs(count: int) -> list[Settled]:
    return [Settled(None, Envelope(uuid.uuid4().hex, None, None),  # type: ignore[arg-type]
                    Outcome.success({"success": 1, "echo": {"n": n}, "attempt": 1}, 1), 0.002)
            for n in range(count)]


def main() -> None:
    exchange = f"bench.{uuid.uuid4().hex[:8]}.events"
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    side = connection.channel()
    publisher = EventPublisher(exchange, service(), host="bench", instance="1")
    publisher.consuming(type("Ch", (), {"connection": connection})())  # type: ignore[arg-type]
    queue = side.queue_declare("", exclusive=True).method.queue
    side.queue_bind(queue, exchange, routing_key="#")
    def per_event(per_round: int, *, publish: bool, pump: bool) -> float:
        rounds = [jobs(per_round) for _ in range(EVENTS // per_round)]
        samples = []
        for _ in range(5):
            started = time.process_time()
            for batch in rounds:
                if publish:
                    publisher.settled(batch)
                if pump:
                    connection.process_data_events(0)
            samples.append((time.process_time() - started) / EVENTS * 1e6)
            connection.process_data_events(0)
            side.queue_purge(queue)
        return statistics.median(samples)

    for per_round in (1, 10):
        alone = per_event(per_round, publish=True, pump=False)
        pumped = per_event(per_round, publish=True, pump=True)
        idle = per_event(per_round, publish=False, pump=True)
        print(f"rounds of {per_round:2}: settled() {alone:6.1f} µs per event; with the "
              f"loop's pump that writes them {pumped - idle:6.1f} µs more than an empty pump")
    raw = connection.channel()
    properties = pika.BasicProperties(content_type="application/json")
    samples = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(EVENTS):
            raw.basic_publish(exchange, "echo.succeeded", b'{"job_id":"x"}', properties)
        samples.append((time.process_time() - started) / EVENTS * 1e6)
        side.queue_purge(queue)
    print(f"a bare pika publish, same machine, same moment: {statistics.median(samples):.1f} "
          "µs")
    assert publisher.failed == 0, publisher.failed
    side.exchange_delete(exchange)
    connection.close()


if __name__ == "__main__":
    main()
