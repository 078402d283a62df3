"""The consumer's runtime: one process per instance, its executor child, its decisions.

- `listener`: the entry point of `listeners/<type>_consumer.py` (arguments, exit codes).
- `loop`: the main loop: connect, take deliveries, hand batches to the child, keep
  the connection alive meanwhile, carry out the settlement; reconnects.
- `channel`: the consumer's broker connection and channels (deliveries in, acks,
  confirmed publishes, replies out).
- `executor` (parent side) and `child` (inside it): the process that runs the jobs, and
  the pipe protocol between them.
- `runner`: one job under its lock with its state record (in the child, or in the
  caller with queue_enabled = 0).
- `limits`: soft, hard and memory limits and recycling: one policy.
- `settlement`: what an outcome means: the ordered plan of publishes, reply and ack.
- `stop`, `notify`, `testhook`: signals, sd_notify, the watchdog test's hang.
"""
