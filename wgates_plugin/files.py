"""Files are untrusted input, and a crash never leaves half of one: the reading and writing every
saved artifact (pruned models, LPNets, reports) goes through.

* :func:`atomic_path` / :func:`write_text`: write to a temporary file in the same folder, ``fsync``,
  then rename over the target — a reader sees the old file or the new one, never a torn one.
* :func:`read_json`: a size limit before reading, and every failure (not UTF-8, not JSON, nested
  deeper than the parser allows) one :class:`~wgates_plugin.errors.FileFormatError` naming the file.
* :func:`read_tensors`: a safetensors file's declared names and shapes are checked (against
  what the caller expects and against :data:`LIMITS`) before a tensor is read, and non-finite
  values can be refused.
* :func:`tensors_digest`: the SHA-256 of a state dict (names, dtypes, shapes, bytes), stored at save
  and compared at load, so a changed byte is a refused file and not a different model.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from wgates_plugin.files import read_json, tensors_digest, write_text
    >>> path = Path(tempfile.mkdtemp()) / "report.json"
    >>> write_text(path, '{"top1": 0.9}')
    >>> read_json(path, "a report")["top1"]
    0.9
    >>> path.write_text("{")
    1
    >>> read_json(path, "a report")
    Traceback (most recent call last):
    ...
    wgates_plugin.errors.FileFormatError: '...report.json' is not a report: not valid JSON (...)
    >>> len(tensors_digest({"w": torch.zeros(2)}))
    64
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import ConfigError, FileFormatError, MissingFileError

__all__ = ["FileLimits", "LIMITS", "atomic_path", "check_writable", "write_text", "read_json", "parse_json",
           "require", "read_tensors", "save_tensors", "tensors_digest"]


@dataclass
class FileLimits:
    """What a loaded file may declare before anything is allocated for it.

    Attributes:
        json_bytes: largest JSON file read.
        tensor_elements: most elements of all tensors of one file together (and of a model built
            from a record: its parameters).
        input_elements: most elements of an example input a record declares.
        width: largest layer width (features, hidden units, classes) a record declares.
    """

    json_bytes: int = 64 * 2**20
    tensor_elements: int = 2**31
    input_elements: int = 2**26
    width: int = 2**20


LIMITS = FileLimits()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path``; when the block succeeds it is synced and renamed to ``path``.

    If the block raises, the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_umask())  # not mkstemp's 0600
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Raise :class:`~wgates_plugin.errors.ConfigError` unless files can be created in ``folder``:
    checked before long work whose result would be written there. Nothing is left behind (a missing
    folder is not created; its nearest existing parent is tested instead)."""
    folder = Path(folder).absolute()
    probe = next(p for p in (folder, *folder.parents) if p.exists())
    if not probe.is_dir():
        raise ConfigError(f"{what} '{folder}' cannot be created: '{probe}' is a file")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(f"{what} '{folder}' cannot be written ({exc.strerror or exc}); choose another "
                          "location") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _exists(path: Path, what: str) -> None:
    if not path.is_file():
        raise MissingFileError(f"no {what} at '{path}'")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse the JSON file ``path`` (``what`` it should be, for the message).

    Raises:
        MissingFileError: no such file.
        FileFormatError: larger than ``LIMITS.json_bytes``, not UTF-8, not JSON, or nested too deeply.
    """
    path = Path(path)
    _exists(path, what)
    size = path.stat().st_size
    if size > LIMITS.json_bytes:
        raise FileFormatError(f"'{path}' is {size} bytes, more than {_article(what)} can be ({LIMITS.json_bytes} "
                              "bytes at most; wgates_plugin.files.LIMITS.json_bytes)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise FileFormatError(f"'{path}' is not {_article(what)}: not UTF-8 text") from None
    except OSError as exc:
        raise FileFormatError(f"'{path}' cannot be read as {_article(what)}: {exc.strerror or exc}") from None
    return parse_json(text, path, what)


def parse_json(text: str, path: str | os.PathLike, what: str) -> Any:
    """``json.loads(text)`` of text read from ``path``; a failure is a :class:`FileFormatError`."""
    if len(text) > LIMITS.json_bytes:
        raise FileFormatError(f"'{path}' holds {len(text)} characters of JSON, more than {LIMITS.json_bytes}")
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise FileFormatError(f"'{path}' is not {_article(what)}: not valid JSON ({exc})") from None
    except RecursionError:
        raise FileFormatError(f"'{path}' is not {_article(what)}: its JSON is nested too deeply") from None


def _article(what: str) -> str:
    return what if what.startswith(("a ", "an ", "the ")) else f"a {what}"


def read_tensors(path: str | os.PathLike, what: str, shapes: Mapping[str, tuple[int, ...]] | None = None,
                 finite: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of the safetensors file ``path``.

    Args:
        what: what the file should be, for the messages.
        shapes: the names and shapes expected; checked against the file's header before any tensor
            is read (missing, unexpected and mismatched names are listed). The total size declared
            is checked against ``LIMITS.tensor_elements`` in any case.
        finite: refuse NaN or inf values.

    Raises:
        MissingFileError: no such file.
        FileFormatError: not a safetensors file, a header past the limits or not matching ``shapes``,
            or non-finite values when ``finite``.
    """
    path = Path(path)
    _exists(path, what)
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            declared = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            _check_declared(path, what, declared, shapes)
            tensors = {k: f.get_tensor(k) for k in declared}
    except SafetensorError as exc:
        raise FileFormatError(f"'{path}' is not {_article(what)}: not a readable safetensors file ({exc})") from None
    except (OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, FileFormatError):
            raise
        raise FileFormatError(f"'{path}' is not {_article(what)}: {type(exc).__name__}: {exc}") from None
    if finite:
        bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise FileFormatError(f"'{path}' holds NaN or inf values in {bad[:5]}: refused as {_article(what)}")
    return tensors, metadata


def _check_declared(path: Path, what: str, declared: Mapping[str, tuple[int, ...]],
                    shapes: Mapping[str, tuple[int, ...]] | None) -> None:
    total = sum(math.prod(s) for s in declared.values())
    if total > LIMITS.tensor_elements:
        raise FileFormatError(f"'{path}' declares {total} tensor elements, more than {LIMITS.tensor_elements} "
                              "(wgates_plugin.files.LIMITS.tensor_elements)")
    if shapes is None:
        return
    missing = sorted(set(shapes) - set(declared))
    unexpected = sorted(set(declared) - set(shapes))
    wrong = [f"{k}: file {declared[k]}, expected {tuple(shapes[k])}" for k in shapes
             if k in declared and declared[k] != tuple(shapes[k])]
    if missing or unexpected or wrong:
        raise FileFormatError(f"'{path}' does not fit: its tensors are not those of {_article(what)}: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}")


def require(data: Any, spec: Mapping[str, type | tuple[type, ...]], path: str | os.PathLike, what: str) -> dict:
    """``data`` if it is an object holding every key of ``spec`` with a value of its type (never a bool
    for a number), else a :class:`FileFormatError` naming the file, ``what`` and the key."""
    if not isinstance(data, dict):
        raise FileFormatError(f"'{path}': {what} is not an object")
    for key, types in spec.items():
        value = data.get(key)
        numeric = types in (int, float, (int, float))
        if key not in data or not isinstance(value, types) or (numeric and isinstance(value, bool)):
            names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
            raise FileFormatError(f"'{path}': {what} needs '{key}' ({names}), got {value!r:.80}")
    return data


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
                 ) -> None:
    """Write a state dict (copied to contiguous CPU tensors) as safetensors, atomically."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(state, os.fspath(tmp), metadata=metadata)


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state dict: every name, dtype, shape and the bytes, in name order (each field
    length-prefixed, so no two state dicts share a digest by shifting bytes between fields)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        header = json.dumps([name, str(t.dtype), list(t.shape)]).encode()
        digest.update(len(header).to_bytes(8, "little") + header)
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
