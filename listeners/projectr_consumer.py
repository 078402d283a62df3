#!/usr/bin/env python3
"""Consume projectr jobs from RabbitMQ: `projectr_consumer.py [--config gear.ini] [--instance N]`.

One process per instance (systemd: projectr-consumer@N.service). The work is done by
gearqueue's runtime; this file only names the job type.
"""

from gearqueue.listener import main

if __name__ == "__main__":
    main("projectr")
