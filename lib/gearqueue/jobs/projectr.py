"""The ProjectR job: gEAR's message in, a projection and gEAR's reply out.

Orchestration only; the steps live in `gearqueue.projectr` (see its package docstring)
and the contract is docs/projectr.md. Reply `success`: 1 computed now, 2 an identical
projection was already complete (found at once, or finished by another worker while
this one waited on its lock), and -1 (raised as a JobError) for every bad input.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..config import Settings
from ..errors import JobError, PermanentJobError
from ..files import exclusive
from ..matrices.targets import open_target
from ..projectr.carts import Loadings, read_cart
from ..projectr.engine import DEFAULT_ENGINE, Engine, make_engine
from ..projectr.matching import check_matched_loadings, match_genes
from ..projectr.outputs import ProjectionFiles, find_complete, publish, require_root
from ..projectr.projection import CHUNK_BYTES, ProjectionResult, project
from ..projectr.request import LEAST_SQUARES, ProjectRRequest, parse_request
from .base import Job, JobContext

COMPUTED, REUSED = 1, 2


class ProjectRJob(Job[ProjectRRequest]):
    name = "projectr"

    def __init__(self, settings: Settings, *, engine: str | None = None,
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        super().__init__(settings)
        # The argument (tests, benchmarks), else R, the reference implementation.
        self.engine_name: str = engine or DEFAULT_ENGINE
        self.chunk_bytes = chunk_bytes
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = make_engine(self.engine_name)
            engine.start()
            self._engine = engine
        return self._engine

    def warm_up(self) -> None:
        """Start R (and check its packages) before the first job, in the executor child."""
        _ = self.engine

    def validate(self, payload: Mapping[str, Any]) -> ProjectRRequest:
        return parse_request(payload)

    def run(self, request: ProjectRRequest, context: JobContext) -> dict[str, Any]:
        files = ProjectionFiles(self.settings.paths.projections_dir, request.dataset_id,
                                request.genecart_id, request.projection_id)
        needs_pval = request.full_output and request.algorithm == "nmf"
        require_root(files)  # before the lock file's folder is created under it
        done = find_complete(files, request.algorithm, request.zscore, needs_pval)
        if done is None:
            with exclusive(files.lock, purpose=f"projection {request.projection_id}"):
                # Another worker may have finished it while we waited for the lock.
                done = find_complete(files, request.algorithm, request.zscore, needs_pval)
                if done is None:
                    return self._compute(request, files, context)
        context.log.info("projection %s is already complete; reusing it",
                         request.projection_id)
        counts = {key: done.get(key) for key in COUNT_FIELDS}
        return {"success": REUSED, "message": found_message(counts),
                "projection_id": request.projection_id, **counts}

    def _compute(self, request: ProjectRRequest, files: ProjectionFiles,
                 context: JobContext) -> dict[str, Any]:
        started = time.monotonic()
        paths = self.settings.paths
        fields: dict[str, Any] = {"projection_id": request.projection_id}
        try:
            target = open_target(paths.datasets_dir, request.dataset_id)
        except JobError as error:
            error.reply_fields = {**fields, **error.reply_fields}
            raise
        try:
            cart = read_cart(paths.carts_dir, request.genecart_id, request.scope)
            match = match_genes(target.gene_ids, cart.gene_ids)
            fields.update(num_common_genes=len(match),
                          num_genecart_genes=cart.num_unique_genes,
                          num_dataset_genes=len(target.gene_ids))
            loadings = cart.values[match.loading_rows]
            _check_inputs(request, cart, len(match), fields)
            check_matched_loadings(loadings, match, cart.pattern_names)
            result = project(target, match.target_rows, loadings, request.algorithm,
                             zscore=request.zscore, full_output=request.full_output,
                             engine=self.engine, chunk_bytes=self.chunk_bytes)
            entry = {"uuid": request.projection_id, "algorithm": request.algorithm,
                     **{key: fields[key] for key in COUNT_FIELDS},
                     "zscore": request.zscore, "scope": request.scope,
                     "full_output": result.pval is not None}
            publish(files, target.sample_ids, cart.pattern_names, result.coef, result.pval,
                    entry, integers=request.algorithm == "binary")
        except JobError as error:
            error.reply_fields = {**fields, **error.reply_fields}
            raise
        finally:
            target.close()
        context.log.info("projection %s: %d samples x %d patterns in %.2f s",
                         request.projection_id, len(target.sample_ids),
                         len(cart.pattern_names), time.monotonic() - started)
        counts = {key: fields[key] for key in COUNT_FIELDS}
        message = " ".join([found_message(counts),
                            *notes(request, result, cart.pattern_names)])
        return {"success": COMPUTED, "message": message,
                "projection_id": request.projection_id, **counts}


COUNT_FIELDS = ("num_common_genes", "num_genecart_genes", "num_dataset_genes")


def found_message(counts: Mapping[str, Any]) -> str:
    """gEAR's reply message, word for word, so its web page shows the same text."""
    if not counts.get("num_common_genes"):
        return ""
    return (f"Found {counts['num_common_genes']} common genes between the target dataset "
            f"({counts['num_dataset_genes']} genes) and the pattern file "
            f"({counts['num_genecart_genes']} genes).")


def _check_inputs(request: ProjectRRequest, cart: Loadings, common: int,
                  fields: dict[str, Any]) -> None:
    if common == 0:
        raise PermanentJobError(
            f"No common genes between the target dataset ({fields['num_dataset_genes']} "
            f"genes) and the pattern file ({fields['num_genecart_genes']} genes).")
    patterns = len(cart.pattern_names)
    if request.algorithm in LEAST_SQUARES and patterns > common:
        raise PermanentJobError(
            f"The pattern file has {patterns} patterns but only {common} genes are common "
            f"to the target dataset; {request.algorithm} needs at least as many common "
            f"genes as patterns.")


def notes(request: ProjectRRequest, result: ProjectionResult,
          pattern_names: list[str]) -> list[str]:
    """What the user should know about this result beyond the gene counts."""
    said = []
    if result.not_estimable:
        names = ", ".join(repr(pattern_names[index]) for index in result.not_estimable)
        said.append(f"Patterns not estimable from the common genes (collinear with other "
                    f"patterns, or all zero), left NA: {names}.")
    if result.incomplete_samples:
        said.append(f"{result.incomplete_samples} sample(s) had missing values; each was "
                    f"fitted on its remaining genes.")
    if result.na_samples:
        said.append(f"{result.na_samples} sample(s) have NA values (too few usable genes).")
    if result.centred_na:
        said.append("The dataset has missing or infinite values in common genes; "
                    "pca_centered (projectR's centring over all samples) propagates them, "
                    "so every value is NA.")
    if request.full_output and request.algorithm != "nmf":
        said.append(f"full_output adds p-values for nmf only; none for {request.algorithm}.")
    return said
