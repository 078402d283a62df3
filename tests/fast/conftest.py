"""The fast tier: the settlement and the loop in-process, echo in a real executor child
and inline (the `consumer` fixture runs each loop test in both isolations).

One gear.ini and one warm child serve the whole tier (a child that a test kills is
started again by the loop, as in production). Job ids are unique per test, so the
shared state database never mixes tests up. No broker: `RecordingChannel` stands in
for our channel and writes down what would have gone to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from gearqueue.config import ServiceSettings, Settings, load_settings
from gearqueue.worker.executor import Executor
from gearqueue.worker.inline import InlineExecutor
from gearqueue.worker.loop import Consumer
from gearqueue.worker.observers import ConsumerObserver
from gearqueue.worker.stop import StopRequest

from .recording_channel import RecordingChannel

#: The echo service of the tier: batches of 5, one retry, a short hard time limit.
ECHO = {"prefetch": 5, "max_retries": 1, "retry_backoff": 0.4, "retry_backoff_max": 10,
        "time_limit": 0.5}


@pytest.fixture(scope="session")
def fast_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    folder = tmp_path_factory.mktemp("fast")
    lines = ["[rabbitmq]", "url = amqp://guest:guest@127.0.0.1:1/%2F", "", "[paths]"]
    lines += [f"{key} = var/{key.removesuffix('_dir')}" for key in (
        "state_dir", "datasets_dir", "carts_dir", "projections_dir", "uploads_dir",
        "exports_dir")]
    lines += ["", "[echo_service]", "queue = fast.echo_jobs"]
    lines += [f"{key} = {value}" for key, value in ECHO.items()]
    path = folder / "gear.ini"
    path.write_text("\n".join(lines) + "\n")
    return load_settings(path, environ={})


@pytest.fixture(scope="session")
def echo_service(fast_settings: Settings) -> ServiceSettings:
    return fast_settings.service("echo")


@pytest.fixture(scope="session")
def warm_executor(fast_settings: Settings, echo_service: ServiceSettings
                  ) -> Iterator[Executor]:
    executor = Executor(fast_settings, echo_service, "fast-tier")
    yield executor
    executor.shutdown()


@pytest.fixture
def tag() -> str:
    """A prefix that makes this test's job ids its own."""
    return f"f{uuid.uuid4().hex[:8]}"


ConsumerFactory = Callable[..., tuple[Consumer, RecordingChannel]]


@pytest.fixture(scope="session")
def inline_executor(fast_settings: Settings, echo_service: ServiceSettings
                    ) -> Iterator[InlineExecutor]:
    executor = InlineExecutor(fast_settings, echo_service, "fast-tier")
    executor.start(idle=lambda: None)
    yield executor
    executor.shutdown()


def _factory(settings: Settings, executor: Executor | InlineExecutor) -> ConsumerFactory:
    def make(on_pump: Callable[[StopRequest], None] | None = None,
             observers: list[ConsumerObserver] | None = None
             ) -> tuple[Consumer, RecordingChannel]:
        stop = StopRequest()
        hook = (lambda: on_pump(stop)) if on_pump is not None else None
        channel = RecordingChannel(stop, on_pump=hook)
        if isinstance(executor, InlineExecutor):
            executor._stop_requested = lambda: stop.requested  # this test's stop
        loop = Consumer(settings, "echo", identifier="fast-tier", stop=stop,
                        executor=executor, open_channel=lambda: channel,  # type: ignore[arg-type,return-value]
                        observers=observers)
        return loop, channel

    return make


@pytest.fixture(params=["process", "inline"])
def consumer(request: pytest.FixtureRequest, fast_settings: Settings,
             warm_executor: Executor, inline_executor: InlineExecutor) -> ConsumerFactory:
    """A Consumer around the shared warm child or the inline executor (both
    isolations), and a RecordingChannel to serve."""
    if request.param == "inline":
        return _factory(fast_settings, inline_executor)
    if not warm_executor.running:
        warm_executor.start(idle=lambda: None)
    return _factory(fast_settings, warm_executor)


@pytest.fixture
def process_consumer(fast_settings: Settings, warm_executor: Executor) -> ConsumerFactory:
    """Only for what needs a child: a crash that must not take the test with it."""
    if not warm_executor.running:
        warm_executor.start(idle=lambda: None)
    return _factory(fast_settings, warm_executor)


@pytest.fixture
def inline_consumer(fast_settings: Settings, inline_executor: InlineExecutor
                    ) -> ConsumerFactory:
    """Only for what is inline's alone."""
    return _factory(fast_settings, inline_executor)


@pytest.fixture
def isolation(consumer: ConsumerFactory, request: pytest.FixtureRequest) -> str:
    """The isolation the `consumer` fixture runs this test with."""
    return str(request.node.callspec.params["consumer"])
