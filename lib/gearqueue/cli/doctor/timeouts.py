"""The broker's consumer_timeout against each job type's time limit.

The broker closes the channel of a delivery unacked for longer than consumer_timeout
(30 min by default in RabbitMQ 3.x), and the job is delivered again: a job allowed to
run longer (time_limit 0, or above it) is a finding, unless the broker is 3.12+, where
the consumer asks for its own x-consumer-timeout. AMQP does not expose the value; it is
read with `rabbitmqctl environment` when the broker runs on this host (and the node
found there listens on the configured port), else the default is assumed. A queue may
also have its own timeout (an x-consumer-timeout argument, or a policy's
consumer-timeout), which the management API shows; that one wins.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from ...config import ServiceSettings
from ...worker.channel import CONSUMER_TIMEOUT_MARGIN, CONSUMER_TIMEOUT_SINCE, consumer_arguments
from .findings import Finding, fail, ok

DEFAULT_CONSUMER_TIMEOUT_MS = 1_800_000
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "")


def _raise_it(above_ms: int | None = None) -> str:
    value = f"<more than {above_ms}>" if above_ms else "86400000"
    return (f"raise it in the broker's rabbitmq.conf (consumer_timeout = {value}, in ms; "
            f"then restart the broker)")


@dataclass(frozen=True)
class ConsumerTimeout:
    #: Milliseconds; None when the broker has it switched off.
    milliseconds: int | None
    #: Where the value comes from (or why it is assumed).
    source: str


def read_consumer_timeout(url: str, environ: Mapping[str, str] = os.environ
                          ) -> ConsumerTimeout:
    """The broker's consumer_timeout via `rabbitmqctl environment`, else the default."""
    parsed = urlparse(url)
    port = parsed.port or (5671 if parsed.scheme == "amqps" else 5672)
    assumed = "assumed: the default"
    if (parsed.hostname or "") not in LOCAL_HOSTS:
        return ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_MS, f"{assumed} (remote broker)")
    ctl = shutil.which("rabbitmqctl", path=environ.get("PATH"))
    if ctl is None:
        return ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_MS, f"{assumed} (no rabbitmqctl)")
    try:
        result = subprocess.run([ctl, "-q", "environment"], capture_output=True, text=True,
                                timeout=30, check=False, env=dict(environ))
    except (OSError, subprocess.TimeoutExpired) as error:
        return ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_MS, f"{assumed} ({error})")
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()[:1]
        return ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_MS,
                               f"{assumed} (rabbitmqctl: {reason[0] if reason else 'failed'})")
    listeners = re.search(r"\{tcp_listeners,\[(.*?)\]\}", result.stdout, re.S)
    if listeners and not re.search(rf"\b{port}\}}", listeners.group(1)):
        return ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_MS,
                               f"{assumed} (the local node rabbitmqctl reaches does not "
                               f"listen on {port})")
    found = re.search(r"\{consumer_timeout,\s*(\d+|undefined|false)\}", result.stdout)
    if found is None:
        return ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_MS, "default (not set on the node)")
    value = found.group(1)
    return ConsumerTimeout(int(value) if value.isdigit() else None, "rabbitmqctl environment")


def queue_consumer_timeout(queue: Mapping[str, Any] | None) -> ConsumerTimeout | None:
    """A queue's own timeout from its management API record: the x-consumer-timeout
    argument, else its policy's consumer-timeout; None if it has neither."""
    if not queue:
        return None
    value = (queue.get("arguments") or {}).get("x-consumer-timeout")
    if isinstance(value, int):
        return ConsumerTimeout(value, "the queue's x-consumer-timeout argument")
    policy = queue.get("effective_policy_definition") or {}
    value = policy.get("consumer-timeout") if isinstance(policy, dict) else None
    if isinstance(value, int):
        return ConsumerTimeout(value, f"policy {queue.get('policy') or '?'}")
    return None


def _minutes(milliseconds: float) -> str:
    seconds = milliseconds / 1000
    return f"{seconds / 60:g} min" if seconds >= 120 else f"{seconds:g} s"


def check_time_limit(service: ServiceSettings, version: tuple[int, ...],
                     timeout: ConsumerTimeout) -> Finding:
    """Will the broker take a job back (consumer_timeout) before it can finish?"""
    subject = service.job_type
    arguments = consumer_arguments(service, version)
    if arguments:
        return ok(subject, f"consumers ask for x-consumer-timeout "
                  f"{_minutes(arguments['x-consumer-timeout'])} (time_limit + "
                  f"{CONSUMER_TIMEOUT_MARGIN:g} s)")
    if timeout.milliseconds is None:
        return ok(subject, f"the broker's consumer_timeout is off ({timeout.source})")
    broker_limit = f"the broker's consumer_timeout ({_minutes(timeout.milliseconds)}, " \
                   f"{timeout.source})"
    newer = "; RabbitMQ {}.{}+ would take x-consumer-timeout".format(*CONSUMER_TIMEOUT_SINCE)
    section = f"[{service.job_type}_service]"
    if not service.time_limit:
        return fail(subject, f"no time_limit: a job running longer than {broker_limit} "
                    f"loses its channel and is delivered again",
                    f"set time_limit = <seconds> in {section} below it, or {_raise_it()}"
                    f"{newer}")
    if service.time_limit * 1000 + CONSUMER_TIMEOUT_MARGIN * 1000 >= timeout.milliseconds:
        return fail(subject, f"time_limit {service.time_limit:g} s reaches {broker_limit}: "
                    f"the broker would take the job back before time_limit stops it",
                    f"{_raise_it(int((service.time_limit + CONSUMER_TIMEOUT_MARGIN) * 1000))}, "
                    f"or lower time_limit in {section}{newer}")
    return ok(subject, f"time_limit {service.time_limit:g} s is below {broker_limit}")
