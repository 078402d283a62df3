"""gEAR's side of the ProjectR queue, written here from what gEAR's code does.

Read (never copied) from IGS/gEAR: `lib/gearqueue.py` (Connection.publish),
`lib/gear/queue.py` (the publisher's connection), and `www/api/resources/projectr.py`
(ProjectR.post, ProjectRStatus.get, ProjectROutputFile.post). Behaviour kept:

- publish: a new blocking connection; `queue_declare(queue=name)` (non-durable, no
  arguments); publisher confirms; `basic_publish` to the topic exchange `message`,
  routing key = queue name, JSON body, delivery_mode 2, content_type
  application/json; no reply_to, no message_id. The body is the 8 fields.
- ProjectR.post: full_output only for nmf/fixednmf; projection id = MD5 of
  "dataset-cart-algorithm-zscore" as a UUID when none is given; an existing CSV (and
  p-values if asked) answers complete at once; an existing status file that is
  pending/running/complete is returned as is, a failed one is deleted and the job run
  again; otherwise the status file is written pending and the message published; a
  failed publish writes the status failed with the error.
- ProjectRStatus.get: 404 without the file; the JSON as read; deleted once complete.
- ProjectROutputFile.post: the dataset's projections.json, the cart's entries, the
  first with the same algorithm and zscore (legacy is_pca read as pca/nmf), its uuid if
  `<uuid>.csv` exists.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pika


class GearWebAPI:
    def __init__(self, projections_dir: Path, parameters: pika.ConnectionParameters,
                 queue: str = "projectr") -> None:
        self.projections = projections_dir
        self.parameters = parameters
        self.queue = queue

    # --- lib/gearqueue.py ------------------------------------------------------------

    def publish(self, message: dict[str, Any]) -> None:
        connection = pika.BlockingConnection(self.parameters)
        try:
            channel = connection.channel()
            channel.queue_declare(queue=self.queue)
            channel.confirm_delivery()
            channel.basic_publish(exchange="message", routing_key=self.queue,
                                  body=json.dumps(message),
                                  properties=pika.BasicProperties(
                                      delivery_mode=2, content_type="application/json"))
            connection.process_data_events(time_limit=0)
        finally:
            if connection.is_open:
                connection.close()

    # --- www/api/resources/projectr.py ---------------------------------------------

    def status_path(self, projection_id: str) -> Path:
        return self.projections / "job_status" / f"job_{projection_id}.json"

    def request(self, dataset_id: str, genecart_id: str, algorithm: str, *,
                zscore: bool = False, full_output: bool = True,
                scope: str = "weighted-list", projection_id: str | None = None,
                session_id: str = "a-session") -> dict[str, Any]:
        """ProjectR.post."""
        if algorithm not in ("nmf", "fixednmf"):
            full_output = False
        key = "-".join(map(str, (dataset_id, genecart_id, algorithm, zscore)))
        projection_id = projection_id or str(uuid.UUID(hashlib.md5(key.encode()).hexdigest()))
        by_dataset = self.projections / "by_dataset" / dataset_id
        status: dict[str, Any] = {"status": "pending", "result": {"projection_id":
                                                                  projection_id},
                                  "error": None}
        (self.projections / "job_status").mkdir(parents=True, exist_ok=True)
        csv = by_dataset / f"{projection_id}.csv"
        if csv.is_file() and not (full_output
                                  and not (by_dataset / f"{projection_id}_pval.csv").is_file()):
            status["status"] = "complete"
            return status
        path = self.status_path(projection_id)
        if path.is_file():
            old = json.loads(path.read_text())
            if old["status"] in ("pending", "running", "complete"):
                return old
            path.unlink()
        path.write_text(json.dumps(status))
        message = {"dataset_id": dataset_id, "session_id": session_id,
                   "projection_id": projection_id, "genecart_id": genecart_id,
                   "scope": scope, "algorithm": algorithm, "zscore": zscore,
                   "full_output": full_output}
        try:
            self.publish(message)
        except Exception as error:  # noqa: BLE001 - as gEAR: any error fails the status
            status["status"] = "failed"
            status["error"] = str(error)
            path.write_text(json.dumps(status))
        return status

    def status(self, projection_id: str) -> dict[str, Any] | None:
        """ProjectRStatus.get; None is its 404."""
        path = self.status_path(projection_id)
        if not path.is_file():
            return None
        status = json.loads(path.read_text())
        if status["status"] == "complete":
            path.unlink(missing_ok=True)
        return status

    def poll(self, projection_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """What the browser does: poll until complete or failed."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.status(projection_id)
            if last is not None and last["status"] in ("complete", "failed"):
                return last
            time.sleep(0.05)
        raise AssertionError(f"projection {projection_id} still {last} after {timeout} s")

    def output_file(self, dataset_id: str, genecart_id: str, algorithm: str,
                    zscore: bool = False) -> str | None:
        """ProjectROutputFile.post's projection_id."""
        index = self.projections / "by_dataset" / dataset_id / "projections.json"
        if not index.is_file():
            return None
        text = index.read_text()
        entries = (json.loads(text) if text.strip() else {}).get(genecart_id)
        for config in entries or []:
            if "is_pca" in config:
                config["algorithm"] = "pca" if config["is_pca"] == 1 else "nmf"
            if algorithm == config["algorithm"] and zscore == config.get("zscore", False):
                uuid_ = config["uuid"]
                return uuid_ if (index.parent / f"{uuid_}.csv").is_file() else None
        return None
