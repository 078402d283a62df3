#!/usr/bin/env python3
"""Consume echo jobs from RabbitMQ: `echo_consumer.py [--config gear.ini] [--instance N]`.

One process per instance (systemd: echo-consumer@N.service). The work is done by
gearqueue's runtime; this file only names the job type.
"""

if __name__ == "__main__":
    # Imported here, not at the top: spawn runs this file again (as __mp_main__) in the
    # executor child before it starts, and a top-level import would load the whole
    # consumer, pika included, into every child (~60 ms per start, ~10 MiB).
    from gearqueue.worker.listener import main

    main("echo")
