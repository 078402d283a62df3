"""The ProjectR job: gEAR's message in, a projection and gEAR's reply out.

Orchestration only; the steps live in `gearqueue.projectr` (see its package docstring)
and the contract is docs/projectr.md. Reply `success`: 1 computed now, 2 an identical
projection was already complete (found at once, or finished by another worker while
this one waited on its lock), and -1 (raised as a JobError) for every bad input.

Under `[projectr_service] contract = gear` the job also keeps gEAR's status file and
follows gEAR's file names, lock and preprocessing (`projectr.gear_*` modules).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from ..config import GEAR, Settings
from ..errors import JobError, PermanentJobError
from ..fields import get_safe_id
from ..files import exclusive
from ..matrices.targets import open_target
from ..projectr import gear_contract, gear_status
from ..projectr.carts import Loadings, read_cart
from ..projectr.engine import DEFAULT_ENGINE, Engine, make_engine
from ..projectr.gear_files import GearProjectionFiles, gear_lock
from ..projectr.matching import check_matched_loadings, match_genes
from ..projectr.outputs import ProjectionFiles, find_complete, publish, require_root
from ..projectr.projection import CHUNK_BYTES, ProjectionResult, project
from ..projectr.request import LEAST_SQUARES, ProjectRRequest, parse_request
from .base import FinalFailure, Job, JobContext

log = logging.getLogger(__name__)

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
        service = settings.services.get(self.name)
        #: contract = gear: gEAR's status file, names, lock and preprocessing.
        self.gear = service is not None and service.contract == GEAR

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

    @property
    def reruns_fresh_duplicates(self) -> bool:
        # gEAR republishes an identical message to ask again, then polls the status file.
        return self.gear

    def validate(self, payload: Mapping[str, Any]) -> ProjectRRequest:
        if not self.gear:
            return parse_request(payload)
        request = parse_request(payload, gear_contract.gear_projection_id)
        gear_contract.check_request(request)
        return request

    def run(self, request: ProjectRRequest, context: JobContext) -> dict[str, Any]:
        if not self.gear:
            return self._run(request, context)
        root = self.settings.paths.projections_dir
        gear_status.write_status(root, request.projection_id, gear_status.RUNNING,
                                 {"projection_id": request.projection_id})
        reply = self._run(request, context)
        gear_status.write_status(root, request.projection_id, gear_status.COMPLETE, reply)
        return reply

    def on_final_failure(self, job_id: str, payload: Mapping[str, Any] | None,
                         outcome: FinalFailure) -> None:
        """Under gEAR's contract, tell gEAR's poller: the status file says failed."""
        if not self.gear:
            return
        projection_id = _projection_id_of(payload)
        if projection_id is None:
            log.warning("job %s failed for good, but its message names no projection, so "
                        "gEAR's status file cannot say so", job_id)
            return
        result = {"success": -1, "projection_id": projection_id,
                  **{key: outcome.reply[key] for key in COUNT_FIELDS if key in outcome.reply}}
        gear_status.write_status(self.settings.paths.projections_dir, projection_id,
                                 gear_status.FAILED, result, outcome.message or "failed")

    def _run(self, request: ProjectRRequest, context: JobContext) -> dict[str, Any]:
        root = self.settings.paths.projections_dir
        files = (GearProjectionFiles if self.gear else ProjectionFiles)(
            root, request.dataset_id, request.genecart_id, request.projection_id)
        needs_pval = request.full_output and request.algorithm == "nmf"
        require_root(files)  # before the lock file's folder is created under it
        done = find_complete(files, request.algorithm, request.zscore, needs_pval)
        if done is None:
            hold = gear_lock if self.gear else exclusive
            with hold(files.lock, purpose=f"projection {request.projection_id}"):
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
                          # gEAR counts the dataset's genes after dropping duplicates
                          num_dataset_genes=len(set(target.gene_ids)) if self.gear
                          else len(target.gene_ids))
            loadings = cart.values[match.loading_rows]
            if self.gear:
                loadings = gear_contract.fill_missing(loadings)
            _check_inputs(request, cart, len(match), fields)
            check_matched_loadings(loadings, match, cart.pattern_names)
            result = self._project(request, target, match.target_rows, loadings,
                                   context)
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


    def _project(self, request: ProjectRRequest, target: Any, genes: Any, loadings: Any,
                 context: JobContext) -> ProjectionResult:
        def run(prepare: gear_contract.Prepare | None) -> ProjectionResult:
            return project(target, genes, loadings, request.algorithm,
                           zscore=request.zscore, full_output=request.full_output,
                           engine=self.engine, chunk_bytes=self.chunk_bytes, prepare=prepare,
                           progress=context.progress)
        if not self.gear:
            return run(None)
        preprocessing = gear_contract.GearPreprocessing(request.algorithm,
                                                        len(target.sample_ids))
        return preprocessing.finish(run(preprocessing), run)


def _projection_id_of(payload: Mapping[str, Any] | None) -> str | None:
    """The projection a (possibly bad) message is about, if it says so safely."""
    if payload is None:
        return None
    try:
        given = get_safe_id(payload, "projection_id", required=False)
        return given or parse_request(payload, gear_contract.gear_projection_id).projection_id
    except JobError:
        return None


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
