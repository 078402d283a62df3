#!/usr/bin/env python3
"""`make demo`: one real ProjectR projection through the queue, printed.

Makes a small target dataset D = L·P + noise (genes × samples) and its pattern cart L,
starts one projectr consumer (a real process, R in its executor child), submits the
job through RabbitMQ as the web API would, prints the reply and the projection, and
checks it recovers P. Then an export consumer zips the projection with its metadata and
heatmap (`--heatmap FILE` keeps the PNG: docs/demo-heatmap.png is made so). Uses
./gear.ini (written by `./install.sh --dev`).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from gearqueue.client import Client
from gearqueue.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
GENES, SAMPLES, PATTERNS = 300, 8, 3


def write_inputs(datasets: Path, carts: Path, rng: np.random.Generator) -> np.ndarray:
    genes = [f"ENSG{index:011d}" for index in range(GENES)]
    samples = [f"cell-{index}" for index in range(SAMPLES)]
    loadings = rng.gamma(2.0, 1.0, size=(GENES, PATTERNS))
    truth = rng.uniform(0, 5, size=(PATTERNS, SAMPLES))
    target = loadings @ truth + rng.normal(0, 0.01, size=(GENES, SAMPLES))
    datasets.mkdir(parents=True, exist_ok=True)
    carts.mkdir(parents=True, exist_ok=True)
    with open(datasets / "demo.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["gene", *samples])
        writer.writerows([gene, *(format(value, ".17g") for value in row)]
                         for gene, row in zip(genes, target, strict=True))
    with open(carts / "cart.demo.tab", "w", newline="") as stream:
        writer = csv.writer(stream, delimiter="\t")
        writer.writerow(["gene_id", "gene_symbol", *(f"P{k + 1}" for k in range(PATTERNS))])
        writer.writerows([gene, f"SYM{i}", *(format(value, ".17g") for value in row)]
                         for i, (gene, row) in enumerate(zip(genes, loadings, strict=True)))
    return truth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heatmap", type=Path, help="write the export's heatmap PNG here")
    arguments = parser.parse_args()
    settings = load_settings(ROOT / "gear.ini")
    truth = write_inputs(settings.paths.datasets_dir, settings.paths.carts_dir,
                         np.random.default_rng(7))
    consumers = [subprocess.Popen([sys.executable, str(ROOT / f"listeners/{kind}_consumer.py"),
                                   "--config", str(ROOT / "gear.ini"), "--instance", "demo"])
                 for kind in ("projectr", "export")]
    try:
        payload = {"dataset_id": "demo", "genecart_id": "demo", "scope": "weighted-list",
                   "algorithm": "nmf", "zscore": False, "full_output": True,
                   "projection_id": f"demo-{int(time.time())}"}
        print(f"submitting through the queue: {payload}")
        started = time.perf_counter()
        with Client(settings) as client:
            reply = client.call("projectr", payload, timeout=120)
        print(f"reply after {time.perf_counter() - started:.2f} s: {reply}")
        if reply.get("success", -1) < 0:
            return 1
        output = (settings.paths.projections_dir / "by_dataset" / "demo"
                  / f"{reply['projection_id']}.csv")
        print(f"\n{output}:\n{output.read_text()}")
        with open(output) as stream:
            rows = list(csv.reader(stream))[1:]
        projected = np.array([[float(value) for value in row[1:]] for row in rows]).T
        error = float(np.max(np.abs(projected - truth)))
        print(f"largest difference from the true pattern weights: {error:.2e}")
        with Client(settings) as client:
            export = client.call("export", {"dataset_id": "demo", "format": "zip",
                                            "projection_id": reply["projection_id"]},
                                 timeout=120)
        print(f"\nexport: {export}")
        if export.get("success", -1) < 0:
            return 1
        with zipfile.ZipFile(export["path"]) as archive:
            metadata = json.loads(archive.read("metadata.json"))
            print(f"metadata.json: {json.dumps(metadata, indent=1)}")
            if arguments.heatmap:
                arguments.heatmap.write_bytes(archive.read(metadata["heatmap"]["file"]))
                print(f"heatmap written to {arguments.heatmap}")
        return 0 if error < 0.05 else 1
    finally:
        for consumer in consumers:
            consumer.terminate()
        for consumer in consumers:
            consumer.wait(30)


if __name__ == "__main__":
    sys.exit(main())
