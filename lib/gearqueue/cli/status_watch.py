"""`gearqueue status --watch`: the same view, refreshed until Ctrl-C.

On a terminal it is redrawn in place (rich's Live); in a pipe or a log each refresh is
printed after the last, headed by its time, so nothing is lost to cursor movements. A
broker that stops answering does not end the watch: the error is shown in place of
the figures until it answers again.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from .. import exitcodes
from ..errors import BrokerUnavailable
from .status_render import render

Rows = Callable[[], list[dict[str, Any]]]


def _frame(rows: Rows, as_json: bool) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        found = rows()
    except BrokerUnavailable as error:
        if as_json:
            return json.dumps({"time": stamp, "error": f"broker unavailable: {error}"}) + "\n"
        return f"{stamp}  broker unavailable: {error}\n"
    if as_json:
        return "".join(json.dumps({"time": stamp, **row}) + "\n" for row in found)
    return f"{stamp}  (every refresh; Ctrl-C ends)\n\n{render(found)}"


def watch(rows: Rows, as_json: bool, interval: float) -> int:
    interval = max(interval, 0.2)
    try:
        if sys.stdout.isatty() and not as_json:
            console = Console()
            with Live(Text(_frame(rows, False)), console=console, auto_refresh=False,
                      screen=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(Text(_frame(rows, False)), refresh=True)
        while True:
            sys.stdout.write(_frame(rows, as_json) + ("" if as_json else "\n"))
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return exitcodes.OK
