#!/usr/bin/env python3
"""Consume echo jobs from RabbitMQ: `echo_consumer.py [--config gear.ini] [--instance N]`.

One process per instance (systemd: echo-consumer@N.service). The work is done by
gearqueue's runtime; this file only names the job type.
"""

from gearqueue.listener import main

if __name__ == "__main__":
    main("echo")
