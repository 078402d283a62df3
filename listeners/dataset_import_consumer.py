#!/usr/bin/env python3
"""Consume dataset_import jobs from RabbitMQ.

Usage: `dataset_import_consumer.py [--config gear.ini] [--instance N]`.

One process per instance (systemd: dataset-import-consumer@N.service). The work is done by
gearqueue's runtime; this file only names the job type.
"""

from gearqueue.listener import main

if __name__ == "__main__":
    main("dataset_import")
