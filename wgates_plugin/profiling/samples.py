"""Latency samples on disk: a JSON-lines file that loads without executing code and resumes.

Layout: the first line is ``{"context": {...}}`` (device, torch version, threads, batch, input shape,
model name and architecture hash, group names and sizes, sampling and timing settings). Every further
line is one measured candidate::

    {"index": 3, "counts": [40, 17, ...], "ms": 12.31,
     "blocks": [{"name": "layer1.0", "type": "...Bottleneck", "features": [...], "ms": 0.84}, ...]}

``index == -1`` is the unpruned model (the reference); it is measured first and again every so many
candidates, and :attr:`LatencySamples.reference` is the median of those measurements, so the budget
reference does not rest on one noisy timing. Lines are appended and flushed one by one, so an
interrupted collection loses at most the line being written; a torn last line is ignored on reading,
and a resumed collection skips every index already on disk.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..efficiency.latency import context_diff
from ..errors import FileFormatError, LatencyContextError, MissingFileError
from ..files import parse_json, require

__all__ = ["FORMAT", "LatencyContextError", "LatencySamples", "SampleWriter", "load_samples"]

FORMAT = "wgates-latency-samples/1"
REFERENCE = -1


@dataclass
class LatencySamples:
    """Measured candidates with the context they were measured in.

    Attributes:
        context: the measurement context (see the module docstring).
        records: one dict per measured candidate, ``index >= 0``, in file order.
        references: every measurement of the unpruned model (``index == -1``), in file order.
    """

    context: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    references: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def done(self) -> set[int]:
        """Indices already measured (the reference included)."""
        out = {int(r["index"]) for r in self.records}
        return out | ({REFERENCE} if self.references else set())

    @property
    def reference(self) -> dict[str, Any] | None:
        """The unpruned model's record with the median latency of its measurements (and of each block's)."""
        if not self.references:
            return None
        merged = dict(self.references[0], ms=statistics.median(r["ms"] for r in self.references))
        if "blocks" in merged:
            merged["blocks"] = [dict(b, ms=statistics.median(r["blocks"][i]["ms"] for r in self.references))
                                for i, b in enumerate(merged["blocks"])]
        return merged


def _lines(path: Path) -> Iterator[str]:
    with path.open("r", encoding="utf-8") as f:
        yield from f


def load_samples(path: str | os.PathLike) -> LatencySamples:
    """Read a samples file; a torn (interrupted) last line is skipped.

    Raises:
        MissingFileError: no such file (also a ``FileNotFoundError``).
        FileFormatError: the file is not a latency samples file, or a line is corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no latency samples file at '{path}'")
    try:
        lines = list(_lines(path))
    except UnicodeDecodeError:
        raise FileFormatError(f"'{path}' is not a latency samples file: not UTF-8 text") from None
    header = _parse(lines[0], path, 1) if lines else None
    context = header.get("context") if isinstance(header, dict) else None
    if not isinstance(context, dict) or context.get("format") != FORMAT:
        raise FileFormatError(f"'{path}' is not a latency samples file (first line must be a {FORMAT} context)")
    samples = LatencySamples(context)
    for number, line in enumerate(lines[1:], start=2):
        record = _parse(line, path, number, torn_ok=number == len(lines))
        if record is None:
            continue
        require(record, {"index": int, "ms": (int, float), "counts": list}, path, f"the record on line {number}")
        if not (math.isfinite(record["ms"]) and record["ms"] > 0):
            raise FileFormatError(f"'{path}' line {number}: latency {record['ms']!r} ms is not a finite number > 0")
        (samples.references if record["index"] == REFERENCE else samples.records).append(record)
    return samples


def _parse(line: str, path: Path, number: int, torn_ok: bool = False) -> Any:
    try:
        return parse_json(line, path, f"latency samples file (line {number})")
    except FileFormatError:
        if torn_ok:
            return None  # the collection was interrupted while writing this line
        raise FileFormatError(f"'{path}' line {number} is not valid JSON; the file is corrupt") from None


class SampleWriter:
    """Appends records to a samples file, creating it with ``context`` or checking it matches.

    Args:
        path: the JSON-lines file.
        context: the context of this collection; an existing file must have been written with the same.

    Raises:
        LatencyContextError: the existing file was collected in a different context.
    """

    def __init__(self, path: str | os.PathLike, context: dict[str, Any]) -> None:
        self.path = Path(path)
        if self.path.exists() and self.path.stat().st_size > 0:
            self.samples = load_samples(self.path)
            diff = context_diff(self.samples.context, context)
            if diff:
                raise LatencyContextError(
                    f"'{self.path}' holds samples of another collection ({'; '.join(diff)}). "
                    "HINT: write to a new file, or repeat the original settings to resume it"
                )
            self._repair_torn_tail()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.samples = LatencySamples(context)
            self._write({"context": context})

    def _repair_torn_tail(self) -> None:
        """Drop a partial last line so the next record starts on a line of its own."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.path.write_bytes(data[: data.rfind(b"\n") + 1])

    def _write(self, obj: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(obj, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Write one measured candidate (``index == -1`` for the reference)."""
        self._write(record)
        (self.samples.references if int(record["index"]) == REFERENCE else self.samples.records).append(record)
