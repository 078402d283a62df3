"""A zip of members written once, checked before it is reused.

Members are streamed into the zip (a large CSV never sits in memory) through a writer
that takes their SHA-256 on the way; metadata.json comes last and lists every other
member's checksum and size, with the request and the checksums of the inputs. The zip
is written to a temp file and renamed (files.atomic_output), so a zip under its final
name is complete; before one is reused it is opened (a truncated zip has no central
directory), its metadata must name the same request and inputs, and every member is
read back against its recorded checksum. Member times are the input's modification
time, so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

METADATA_NAME = "metadata.json"
_PIECE = 1 << 20


@dataclass(frozen=True)
class Member:
    name: str
    sha256: str
    size: int


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what goes through it."""

    def __init__(self, target: BinaryIO) -> None:
        self._target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self._target.write(view)
        self.size += len(view)
        return len(view)


class BundleWriter:
    """Add members to an open zip file, recording each one's checksum."""

    def __init__(self, archive: zipfile.ZipFile, mtime: float) -> None:
        self._archive = archive
        self._date_time = _zip_time(mtime)
        self.members: list[Member] = []

    def add_text(self, name: str, write: Callable[[io.TextIOWrapper], Any]) -> Any:
        """Stream a UTF-8 text member; returns what `write` returns."""
        info = self._info(name, zipfile.ZIP_DEFLATED)
        with self._archive.open(info, "w", force_zip64=True) as raw:
            hashing = _Hashing(raw)  # type: ignore[arg-type]
            text = io.TextIOWrapper(io.BufferedWriter(hashing, _PIECE), encoding="utf-8",
                                    newline="")
            result = write(text)
            text.flush()
            text.detach().flush()
        self.members.append(Member(name, hashing.digest.hexdigest(), hashing.size))
        return result

    def add_bytes(self, name: str, data: bytes, *, compress: bool = True) -> None:
        info = self._info(name, zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
        self._archive.writestr(info, data)
        self.members.append(Member(name, hashlib.sha256(data).hexdigest(), len(data)))

    def finish(self, metadata: dict[str, Any]) -> None:
        """metadata.json, last: `metadata` plus the checksum and size of every member."""
        record = {**metadata, "members": {member.name: {"sha256": member.sha256,
                                                         "size": member.size}
                                           for member in self.members}}
        text = json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        self._archive.writestr(self._info(METADATA_NAME, zipfile.ZIP_DEFLATED),
                               text.encode("utf-8"))

    def _info(self, name: str, compression: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=self._date_time)
        info.compress_type = compression
        info.external_attr = 0o644 << 16
        return info


def read_verified(path: Path, request: dict[str, Any],
                  inputs: dict[str, str]) -> dict[str, Any] | None:
    """The metadata of a zip at `path` that is complete and was made from the same
    request and inputs (name -> SHA-256), every member matching its checksum; else None."""
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read(METADATA_NAME))
            reason = _mismatch(archive, metadata, request, inputs)
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError) as error:
        reason = f"unreadable ({error})"
    if reason:
        log.warning("not reusing %s: %s; writing it again", path, reason)
        return None
    return metadata


def _mismatch(archive: zipfile.ZipFile, metadata: Any, request: dict[str, Any],
              inputs: dict[str, str]) -> str | None:
    if not isinstance(metadata, dict) or metadata.get("request") != request:
        return "made for another request"
    recorded = {name: entry.get("sha256") for name, entry in
                metadata.get("inputs", {}).items()}
    if recorded != inputs:
        return "its inputs have changed since"
    members = metadata.get("members", {})
    if sorted([*members, METADATA_NAME]) != sorted(archive.namelist()):
        return "its members are not those its metadata lists"
    for name, entry in members.items():
        digest, size = hashlib.sha256(), 0
        with archive.open(name) as stream:
            while piece := stream.read(_PIECE):
                digest.update(piece)
                size += len(piece)
        if digest.hexdigest() != entry.get("sha256") or size != entry.get("size"):
            return f"member {name} does not match its recorded SHA-256"
    return None


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    """A zip timestamp (no earlier than 1980, which zip cannot represent)."""
    stamp = time.gmtime(max(mtime, 315532800.0))
    return (stamp.tm_year, stamp.tm_mon, stamp.tm_mday, stamp.tm_hour, stamp.tm_min,
            stamp.tm_sec)
