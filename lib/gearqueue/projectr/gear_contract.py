"""ProjectR under contract = gear: the rules gEAR's own consumer applies, where they
differ from projectR's (docs/projectr.md, "Running under gEAR", lists each one).

Read from gEAR's `projectr_callback` (IGS/gEAR www/api/resources/projectr.py):

- the default projection id hashes dataset, cart, algorithm AND zscore: the MD5 of
  `"-".join(map(str, (dataset_id, genecart_id, algorithm, zscore)))` read as a UUID
  (zscore a Python bool, so "...-True" / "...-False");
- unweighted lists are refused with nmf and fixednmf, with gEAR's sentence;
- gEAR builds unweighted carts from its MySQL database: not here (refused, saying so);
- missing values (NaN) become 0 in the target (after the z-scores) and in the loadings;
- fixednmf scales each sample by min(column sums) / its column sum first, the sums
  taken over the matched genes after the steps above;
- a projection holding any NaN fails the job, with gEAR's sentence.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..errors import InvalidMessage, PermanentJobError
from .projection import ProjectionResult
from .request import LEAST_SQUARES, ProjectRRequest

#: gEAR's sentences, word for word (its web page shows them).
UNWEIGHTED_WITH_NMF = "Unweighted gene lists cannot be used with NMF algorithms."
NAN_IN_RESULT = "There are NaN values in the projection patterns.  Cannot proceed."

Prepare = Callable[[np.ndarray, int, int], None]


def gear_projection_id(dataset_id: str, genecart_id: str, algorithm: str,
                       zscore: bool) -> str:
    """gEAR's `create_new_uuid(dataset_id, genecart_id, algorithm, zscore)`."""
    key = "-".join(map(str, (dataset_id, genecart_id, algorithm, bool(zscore))))
    return str(uuid.UUID(hashlib.md5(key.encode("utf-8")).hexdigest()))


def check_request(request: ProjectRRequest) -> None:
    """What gEAR refuses before reading anything, and what it reads from MySQL."""
    if request.scope != "unweighted-list":
        return
    if request.algorithm in LEAST_SQUARES:
        raise InvalidMessage(UNWEIGHTED_WITH_NMF)
    raise InvalidMessage(
        f"gene cart '{request.genecart_id}' is an unweighted gene list, which gEAR keeps "
        f"in its MySQL database; this consumer reads carts from files only. Project it "
        f"with gEAR's own consumer, or save it as a weighted cart "
        f"(cart.{request.genecart_id}.tab, weight 1 per gene) and ask for scope "
        f"weighted-list.")


def fill_missing(loadings: np.ndarray) -> np.ndarray:
    """gEAR's `fillna(0)`: NaN becomes 0 (infinities are left, as pandas leaves them)."""
    return np.where(np.isnan(loadings), 0.0, loadings)


class GearPreprocessing:
    """The per-chunk step of projection.project under gEAR's rules.

    fixednmf's scaling needs every sample's column sum, known only after a full pass.
    The fit is linear in the sample and NNLS commutes with a positive factor, so the
    sums are taken while projecting and the coefficients scaled afterwards; only if a
    factor is not a positive number (z-scored data can sum to <= 0) is the target
    projected again with the factors applied first, exactly as gEAR does.
    """

    def __init__(self, algorithm: str, num_samples: int) -> None:
        self.algorithm = algorithm
        self.column_sums = np.zeros(num_samples) if algorithm == "fixednmf" else None
        self.factors: np.ndarray | None = None

    def __call__(self, data: np.ndarray, start: int, stop: int) -> None:
        """`data`: samples start..stop x matched genes, after the z-scores (in place)."""
        np.copyto(data, 0.0, where=np.isnan(data))
        if self.factors is not None:
            data *= self.factors[start:stop, None]
        elif self.column_sums is not None:
            self.column_sums[start:stop] = data.sum(axis=1)

    def finish(self, result: ProjectionResult, project_again: Callable[[Prepare],
               ProjectionResult]) -> ProjectionResult:
        """Apply fixednmf's scaling, then gEAR's rule that a NaN fails the projection."""
        if self.column_sums is not None and self.factors is None:
            sums = self.column_sums
            with np.errstate(divide="ignore", invalid="ignore"):
                factors = sums.min() / sums
            if np.all(np.isfinite(factors) & (factors > 0)):
                result = replace(result, coef=result.coef * factors[None, :])
            else:
                self.factors = factors
                result = project_again(self)
        if np.isnan(result.coef).any():
            raise PermanentJobError(NAN_IN_RESULT)
        return result
