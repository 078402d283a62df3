"""gEAR's ProjectR message, checked field by field before any work starts.

An existing gEAR publisher must work unchanged, so the accepted shape is what gEAR's web
API sends: its request parser's fields (`analysis`, `analysis_owner_id` included, which
gEAR itself ignores) plus `zscore` and `full_output`. Fields we do not know are logged
and ignored rather than rejected: a newer gEAR adding a field must not break every job.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ..errors import InvalidMessage
from ..fields import get_choice, get_field, get_safe_id

log = logging.getLogger(__name__)

ALGORITHMS = ("nmf", "fixednmf", "pca", "pca_centered", "binary")
SCOPES = ("weighted-list", "unweighted-list")
#: Algorithms solved by least squares: they need at least as many genes as patterns.
LEAST_SQUARES = ("nmf", "fixednmf")

KNOWN_FIELDS = ("dataset_id", "genecart_id", "projection_id", "session_id", "scope",
                "algorithm", "zscore", "full_output", "analysis", "analysis_owner_id")
MAX_SESSION_ID = 256
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class ProjectRRequest:
    dataset_id: str
    genecart_id: str
    projection_id: str
    scope: str
    algorithm: str
    zscore: bool
    full_output: bool
    session_id: str | None = None


def parse_request(payload: Mapping[str, Any], default_id: Callable[[str, str, str, bool], str]
                  | None = None) -> ProjectRRequest:
    """The validated request, or InvalidMessage naming the first bad field.

    `default_id` names a projection whose message carries no projection_id
    (default_projection_id; gEAR's own under contract = gear)."""
    unknown = sorted(set(payload) - set(KNOWN_FIELDS))
    if unknown:
        log.warning("projectr message: ignoring unknown field(s) %s", ", ".join(unknown))
    # Required fields and fields with a default are never None: cast for the type checker.
    dataset_id = cast(str, get_safe_id(payload, "dataset_id"))
    genecart_id = cast(str, get_safe_id(payload, "genecart_id"))
    algorithm = cast(str, get_choice(payload, "algorithm", ALGORITHMS))
    scope = cast(str, get_choice(payload, "scope", SCOPES, required=False,
                                 default="weighted-list"))
    zscore = _flag(payload, "zscore")
    full_output = _flag(payload, "full_output")
    session_id = get_field(payload, "session_id", str, required=False)
    if session_id is not None and len(session_id) > MAX_SESSION_ID:
        raise InvalidMessage(f"field 'session_id' is longer than {MAX_SESSION_ID} characters")
    projection_id = get_safe_id(payload, "projection_id", required=False)
    if projection_id is None:
        projection_id = (default_id or default_projection_id)(dataset_id, genecart_id,
                                                              algorithm, zscore)
    return ProjectRRequest(dataset_id=dataset_id, genecart_id=genecart_id,
                           projection_id=projection_id, scope=scope, algorithm=algorithm,
                           zscore=zscore, full_output=full_output, session_id=session_id)


def default_projection_id(dataset_id: str, genecart_id: str, algorithm: str,
                          zscore: bool) -> str:
    """A UUID that depends only on what the projection is.

    The MD5 of "dataset-cart-algorithm" read as a UUID, "-zscore" appended when z-scored.
    This is NOT gEAR's current id, which hashes zscore always ("...-False"/"...-True"):
    contract = gear uses that one (gear_contract.gear_projection_id). Kept here so that
    ids this project gave out stay stable.
    """
    key = f"{dataset_id}-{genecart_id}-{algorithm}" + ("-zscore" if zscore else "")
    return str(uuid.UUID(hashlib.md5(key.encode("utf-8")).hexdigest()))


def _flag(payload: Mapping[str, Any], name: str) -> bool:
    """A boolean field; gEAR's form parser may send 0/1 or "true"/"false", so accept those."""
    value = get_field(payload, name, (bool, int, str), required=False, default=False)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidMessage(f"field '{name}' must be a boolean, got {value!r}")
