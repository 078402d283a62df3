"""`gearqueue check-config`: the effective settings, passwords masked."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from .. import exitcodes
from ..config import load_settings, mask_url
from .config_example import render_example


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("check-config", help="validate gear.ini and print the "
                                   "effective settings (passwords masked)")
    parser.add_argument("--example", action="store_true",
                        help="print a fully commented gear.ini with every default instead")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.example:
        print(render_example(), end="")
        return exitcodes.OK
    settings = load_settings(args.config)
    print(f"# {settings.source}")
    rabbit = dataclasses.asdict(settings.rabbitmq)
    rabbit["urls"] = [mask_url(url) for url in rabbit["urls"]]
    sections: dict[str, dict[str, Any]] = {
        "rabbitmq": rabbit,
        "paths": {key: str(value) for key, value in
                  dataclasses.asdict(settings.paths).items()},
        "state": {"url": mask_url(settings.state.url)},
    }
    for name, service in settings.services.items():
        values = dataclasses.asdict(service)
        values["broker"] = [mask_url(url) for url in settings.broker_urls(name)]
        sections[f"{name}_service"] = values
    for section, values in sections.items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value) if not isinstance(value, str) else value}")
        print()
    return exitcodes.OK
