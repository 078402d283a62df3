"""pika's own WARNING lines inside a broker call: said after all if it succeeds, dropped
when gearqueue says what happened (the call raised), never held from other threads."""

from __future__ import annotations

import logging
import threading

import pika.exceptions as pe
import pytest

from gearqueue.broker import converted_errors, pika_errors_said_by_us
from gearqueue.errors import BrokerUnavailable, TopologyMismatch

PIKA = logging.getLogger("pika.connection")


def test_a_call_that_succeeds_logs_pikas_lines_after_all(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pika"), pika_errors_said_by_us():
        PIKA.warning("socket hiccup")
        assert "socket hiccup" not in caplog.text  # held back while the call runs
    assert "socket hiccup" in caplog.text


def test_a_call_that_raises_drops_pikas_lines_for_our_one_error(caplog) -> None:
    with (caplog.at_level(logging.WARNING, logger="pika"),
          pytest.raises(BrokerUnavailable, match="acking: "), converted_errors("acking")):
        PIKA.error("connection lost, traceback follows")
        raise pe.StreamLostError("lost")
    assert "traceback follows" not in caplog.text


def test_other_threads_and_lower_levels_pass_through(caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="pika"), pika_errors_said_by_us():
        PIKA.debug("frame sent")
        thread = threading.Thread(target=lambda: PIKA.warning("another thread"))
        thread.start()
        thread.join()
        assert "frame sent" in caplog.text and "another thread" in caplog.text


def test_nested_calls_and_channel_errors_convert_by_code() -> None:
    with (pytest.raises(TopologyMismatch, match="declaring: PRECONDITION"),
          converted_errors("outer"), converted_errors("declaring")):
        raise pe.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg")
    with pytest.raises(KeyError), converted_errors("anything"):  # not pika's: untouched
        raise KeyError("x")
