#!/usr/bin/env python3
"""Consume projectr jobs from RabbitMQ: `projectr_consumer.py [--config gear.ini] [--instance N]`.

One process per instance (systemd: projectr-consumer@N.service). The work is done by
gearqueue's runtime; this file only names the job type.
"""

if __name__ == "__main__":
    # Imported here, not at the top: spawn runs this file again (as __mp_main__) in the
    # executor child before it starts, and a top-level import would load the whole
    # consumer, pika included, into every child (~60 ms per start, ~10 MiB).
    from gearqueue.worker.listener import main

    main("projectr")
