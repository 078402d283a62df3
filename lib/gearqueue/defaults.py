"""Every gear.ini key: its type, its default and why it exists — in one place.

`config.py` parses against this table, `gear.ini.example` is rendered from it (a test
keeps the committed file equal to the rendering), and docs point here. A key that is
not in this table is rejected, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def service_section(job_type: str) -> str:
    """The gear.ini section of a job type's keys: `[<job_type>_service]`."""
    return f"{job_type}_service"


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected 0/1, true/false, yes/no or on/off, got {text!r}")


def parse_int(text: str) -> int:
    return int(text.strip())


def parse_float(text: str) -> float:
    return float(text.strip())


def parse_str(text: str) -> str:
    return text.strip()


def parse_choice(*choices: str, empty: bool = False) -> Callable[[str], str]:
    """One of `choices` (or, with `empty`, nothing: the default decided elsewhere)."""
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices and not (empty and not value):
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return value
    return parse


@dataclass(frozen=True)
class Key:
    name: str
    parse: Callable[[str], Any]
    default: Any
    doc: str
    minimum: float | None = None

    def convert(self, text: str) -> Any:
        value = self.parse(text)
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}, got {text.strip()!r}")
        return value


RABBITMQ_KEYS: tuple[Key, ...] = (
    Key("url", parse_str, "",
        "amqp:// or amqps:// URL(s), comma-separated to fail over between brokers (the "
        "nodes of a cluster: each connect starts at a random one), e.g. "
        "amqp://gear:secret@127.0.0.1:5672/%2F. Taken literally (no % interpolation). "
        "$GEAR_RABBITMQ_URL overrides it. Empty: amqp://guest:guest@<queue_host>:5672/%2F "
        "from the job type's queue_host."),
    Key("heartbeat", parse_int, 60,
        "AMQP heartbeat in seconds. Jobs run in a child process, so this never needs to "
        "cover a job's length.", minimum=0),
    Key("socket_timeout", parse_float, 10.0, "Seconds to wait for a TCP connect.", minimum=0.1),
    Key("blocked_connection_timeout", parse_float, 300.0,
        "Seconds a connection may stay blocked by a broker resource alarm before it is "
        "dropped and re-established.", minimum=0),
    Key("reconnect_max_delay", parse_float, 30.0,
        "Cap of the exponential reconnect backoff (seconds, full jitter).", minimum=0.1),
    Key("ca_file", parse_str, "",
        "amqps: CA bundle to verify the broker with (empty: system CAs)."),
    Key("cert_file", parse_str, "", "amqps: client certificate (PEM), for TLS client auth."),
    Key("key_file", parse_str, "", "amqps: client private key (PEM)."),
    Key("tls_verify", parse_bool, True, "amqps: verify the broker's certificate and host name."),
    Key("connect_retry_seconds", parse_float, 5.0,
        "How long submit() and call() keep trying to reach a broker that is down "
        "(capped exponential backoff) before they raise BrokerDown, or run the job "
        "in-process where the job type's fallback is inline. After a BrokerDown, the "
        "client tries each URL once per submit until a connect succeeds again. 0: one "
        "try.", minimum=0),
    Key("events_exchange", parse_str, "gear.events",
        "Topic exchange every finished job is announced on, with routing key "
        "<job_type>.succeeded, <job_type>.failed (an attempt failed, a retry follows) or "
        "<job_type>.dead_lettered; `gearqueue events` tails it. Publishing never delays, "
        "fails or blocks a job (docs/operations.md, Events). Empty: no events."),
    Key("management_port", parse_int, 15672,
        "Port of the management API (rabbitmq_management) on each broker's host, reached "
        "with the URL's credentials: `gearqueue doctor` reads queue types and arguments, "
        "policies and the cluster's nodes from it, and reports a plugin that is off or "
        "does not answer. 0: do not use it (doctor then checks with AMQP declares and a "
        "local rabbitmqctl only).", minimum=0),
)

PATH_KEYS: tuple[Key, ...] = (
    Key("state_dir", parse_str, "/var/lib/gear/state",
        "Job-state records (queued/running/succeeded/failed, attempts, result), unless "
        "[state] url names a database: one "
        "SQLite database per job type, <job_type>/jobs.sqlite3, and its lock file. Must be "
        "on a local file system (SQLite's WAL shares memory between processes). Relative "
        "paths are taken from the folder of gear.ini."),
    Key("datasets_dir", parse_str, "/var/lib/gear/datasets",
        "Target datasets: <dataset_id>.h5ad, .csv or .tsv."),
    Key("carts_dir", parse_str, "/var/lib/gear/carts",
        "Gene carts (pattern loadings): cart.<genecart_id>.tab."),
    Key("projections_dir", parse_str, "/var/lib/gear/projections",
        "ProjectR outputs: by_dataset/<dataset_id>/<projection_id>.csv and the indexes."),
    Key("uploads_dir", parse_str, "/var/lib/gear/uploads",
        "dataset_import reads uploaded files from here."),
    Key("exports_dir", parse_str, "/var/lib/gear/exports", "export writes its files here."),
)

def parse_optional_bool(text: str) -> bool | None:
    """A boolean, or None (empty: follow another key, e.g. `contract`)."""
    return None if not text.strip() else parse_bool(text)


STATE_KEYS: tuple[Key, ...] = (
    Key("url", parse_str, "",
        "Where job-state records live. Empty: embedded SQLite under [paths] state_dir, for "
        "one machine. A postgresql:// URL (libpq), e.g. postgresql://gear@db-host/gear: one "
        "PostgreSQL database shared by the web API and the consumers of every host "
        "(docs/scaling.md). A password may come from $GEAR_STATE_PASSWORD or ~/.pgpass."),
)

METRICS_KEYS: tuple[Key, ...] = (
    Key("port", parse_int, 0,
        "Serve Prometheus metrics on 127.0.0.1 from this port (0: off). Instance N of a "
        "job type listens on its type's port + N - 1 (a consumer started by hand, "
        "instance 0, on the port itself); a type's port is its section's metrics_port, "
        "else this + 100 x its place in echo, projectr, dataset_import, export (0-3), so "
        "the types of one host never collide (docs/operations.md, Metrics). A port in use "
        "is logged and retried; jobs are never held up by metrics.", minimum=0),
    Key("textfile_dir", parse_str, "",
        "Instead of serving them, write each consumer's metrics to "
        "<textfile_dir>/<identifier>.prom (atomically, about every 5 s and at exit) for "
        "node_exporter's textfile collector. Must be writable by the consumers: "
        "install.sh creates it (group gear, like [paths]) and adds it to the units' "
        "ReadWritePaths=; run it again after setting this. Empty: off. Relative paths are "
        "taken from the folder of gear.ini."),
)

STATUS_KEYS: tuple[Key, ...] = (
    Key("stale_after", parse_float, 0.0,
        "`gearqueue status` shows an instance as not responding when its live status "
        "file (<state_dir>/instances/, rewritten about every second) is older than this "
        "many seconds, though the broker still counts its consumer. 0: the instance's own "
        "figure (10 s; an inline job type: 10 s + its time limit).", minimum=0),
)

SERVICE_KEYS: tuple[Key, ...] = (
    Key("contract", parse_choice("gearqueue", "gear"), "gearqueue",
        "Who is on the other side of the queue. gearqueue: this project's own topology "
        "(durable queue <job_type>_jobs, default exchange). gear: gEAR's web API, "
        "unchanged: queue <job_type> (e.g. projectr) bound to gEAR's topic exchange "
        "'message' and declared non-durable as gEAR's publisher declares it, [paths] "
        "defaults under gEAR's www/ next to gear.ini, and for projectr gEAR's status "
        "file, file names, lock files and preprocessing (docs/projectr.md, Running "
        "under gEAR)."),
    Key("queue_durable", parse_optional_bool, None,
        "Declare the main queue durable (waiting jobs survive a broker restart). Empty: "
        "1 with the gearqueue contract, 0 with the gear contract (gEAR's publisher "
        "declares it non-durable; set 1 only after making gEAR's publisher durable too)."),
    Key("queue_enabled", parse_bool, True,
        "1: submit() publishes to RabbitMQ and a consumer runs the job. 0: the job runs "
        "in-process in the caller, and no broker is contacted."),
    Key("queue_host", parse_str, "localhost",
        "Broker host used when [rabbitmq] url is empty (gEAR's original key)."),
    Key("queue", parse_str, "{job_type}_jobs", "Queue name (with the gear contract the "
        "default is <job_type>, gEAR's name). Retry queues are <queue>.retry.N, "
        "dead letters go to <queue>.dead."),
    Key("prefetch", parse_int, 1,
        "Unacked messages a consumer holds (basic.qos). The deliveries it holds go to the "
        "executor child together, as one batch of up to batch_size.", minimum=1),
    Key("batch_size", parse_int, 0,
        "Most jobs handed to the executor child in one batch (one pipe message each way, "
        "one ack for all). At most prefetch; 0: the same as prefetch. The child's "
        "successor is started 2 batches (or 10% of max_jobs_per_child, if more) before "
        "it is recycled.", minimum=0),
    Key("isolation", parse_choice("process", "inline", empty=True), "",
        "Where the consumer runs a job. process: in its executor child (a crash, a hard "
        "time limit or a leak costs only the child). inline: in the consumer's own "
        "process with no hop, for short jobs: time_limit must be under half the "
        "heartbeat (0: inline_time_limit), and max_memory_mb is not available. Empty: "
        "the job type's own (echo: inline; projectr, dataset_import, export: process)."),
    Key("inline_time_limit", parse_float, 0.0,
        "The hard limit of an inline job whose time_limit is 0 (seconds). 0: a quarter "
        "of the heartbeat (15 s at 60 s), or 15 s with heartbeats off.", minimum=0),
    Key("log_quick_jobs_ms", parse_int, 10,
        "A job that succeeds in less than this many milliseconds is logged at DEBUG, not "
        "INFO; every job is still counted: an INFO line at most every 10 s gives how many "
        "(GEAR_QUICK_JOBS, docs/operations.md). 0: every job at INFO.", minimum=0),
    Key("workers", parse_int, 2,
        "Consumer instances install.sh and `gearqueue scale` enable for this type.", minimum=0),
    Key("max_retries", parse_int, 3,
        "Retries after the first attempt of a transient failure, crash or time limit.",
        minimum=0),
    Key("retry_backoff", parse_float, 2.0,
        "Delay before retry N is retry_backoff * 2^(N-1) seconds, jittered to 50-100%.",
        minimum=0.001),
    Key("retry_backoff_max", parse_float, 600.0, "Cap of one retry delay (seconds).",
        minimum=0.001),
    Key("time_limit", parse_float, 0.0,
        "Hard limit per attempt (seconds): the executor child is killed and the job "
        "retried. 0: no limit.", minimum=0),
    Key("soft_time_limit", parse_float, 0.0,
        "The job gets SoftTimeLimitExceeded after this many seconds, so it can clean up. "
        "0: none.", minimum=0),
    Key("max_memory_mb", parse_int, 0,
        "Executor child RSS cap (MiB): above it the child is recycled after the job; above "
        "twice it the child is killed mid-job and the job retried. 0: no cap.", minimum=0),
    Key("max_jobs_per_child", parse_int, 1000,
        "Recycle the executor child after this many jobs (0: never).", minimum=0),
    Key("rate_limit", parse_float, 0.0,
        "Most jobs per second one consumer starts (0: unlimited).", minimum=0),
    Key("max_message_bytes", parse_int, 1048576,
        "Larger message bodies are rejected as bad input.", minimum=1),
    Key("queue_type", parse_choice("classic", "quorum"), "classic",
        "quorum (the choice for a RabbitMQ cluster; the retry and dead queues follow it) "
        "needs x-arguments on the main queue: a publisher that declares the queue "
        "plainly (gEAR's web API does) then fails with PRECONDITION_FAILED."),
    Key("max_length", parse_int, 0,
        "Opt-in x-max-length with overflow=reject-publish: submit() raises QueueFull "
        "instead of silently dropping. 0: unbounded (no x-argument).", minimum=0),
    Key("max_priority", parse_int, 0, "Opt-in x-max-priority (1-255). 0: no priorities.",
        minimum=0),
    Key("message_ttl", parse_int, 0,
        "Opt-in x-message-ttl in milliseconds for the main queue. 0: none.", minimum=0),
    Key("reply_timeout", parse_float, 60.0, "Default seconds call() waits for a reply.",
        minimum=0.001),
    Key("metrics_port", parse_int, 0,
        "This type's first metrics port (instance 1; instance N: + N - 1). 0: [metrics] "
        "port + 100 x the type's place (echo 0, projectr 1, dataset_import 2, export 3), "
        "or off when [metrics] port is 0.", minimum=0),
    Key("fallback", parse_choice("none", "inline"), "none",
        "What submit() and call() do when queueing is on but no broker answers within "
        "[rabbitmq] connect_retry_seconds. none: raise BrokerDown. inline: run the job "
        "in the caller's process, as when queue_enabled is 0 (same validation, same state "
        "record), logged at WARNING and counted (Client.fallbacks)."),
)

SECTION_KEYS: dict[str, tuple[Key, ...]] = {
    "rabbitmq": RABBITMQ_KEYS,
    "paths": PATH_KEYS,
    "state": STATE_KEYS,
    "metrics": METRICS_KEYS,
    "status": STATUS_KEYS,
}

#: Where gear.ini is looked for when no --config is given (after $GEAR_INI).
SEARCH_PATHS: tuple[str, ...] = ("./gear.ini", "/etc/gear/gear.ini")

#: Environment variables.
ENV_CONFIG = "GEAR_INI"
ENV_RABBITMQ_URL = "GEAR_RABBITMQ_URL"
