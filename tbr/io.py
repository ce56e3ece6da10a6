"""Small file helpers shared by every stage: hashing, JSONL reading and write-ahead appends."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tbr.errors import ConfigError, DataError


def cache_dir() -> Path:
    """Where converted weights and hash memos live (`TBR_CACHE`, default ~/.cache/tbr)."""
    return Path(os.environ.get("TBR_CACHE", Path.home() / ".cache" / "tbr")).expanduser()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object, independent of dict order (used for cache and stage keys)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return sha256_text(blob)[:length]


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime) because model files are hundreds of MB."""
    path = Path(path).resolve()
    st = path.stat()
    memo_path = cache_dir() / "file-hashes.json"
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo: dict[str, str] = {}
    if memo_path.exists():
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, json.JSONDecodeError):
            memo = {}
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    memo[key] = h.hexdigest()
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        tmp.replace(memo_path)
    except OSError:
        pass  # the memo is an optimisation; a read-only cache must not break hashing
    return memo[key]


def read_jsonl_numbered(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, dict) per non-blank line; a bad line raises DataError with file:line:column."""
    path = Path(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}:{e.start + 1}: not UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}:{e.colno}: malformed JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}:1: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-blank line; a bad line raises DataError with file:line:column."""
    for _, row in read_jsonl_numbered(path):
        yield row


def read_jsonl_tolerant(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Read a write-ahead file that a crash may have cut mid-line.

    Only a torn *last* line is forgiven (that is what a kill produces); corruption anywhere else
    is still an error, because silently skipping rows would lose results.
    """
    path = Path(path)
    if not path.exists():
        return [], 0
    lines = path.read_text(encoding="utf-8").split("\n")
    rows, torn = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i >= len(lines) - 2:  # last non-empty line: a partial write
                torn += 1
                continue
            raise DataError(f"{path}:{i + 1}:{e.colno}: malformed JSON in results file: {e.msg}") from None
    return rows, torn


class JsonlAppender:
    """Append-and-flush writer: every row is on disk before the next one is produced.

    A torn final line from an earlier crash is truncated away on open so the file stays valid JSONL.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                with self.path.open("r+b") as f:
                    f.truncate(cut)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def write_many(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON via a temp file + rename so a crash never leaves half a results.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Rewrite a whole JSONL file via a temp file + rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def ensure_dir(path: str | Path, what: str) -> Path:
    """Create an output folder up front, so a path that cannot be one fails before a model loads."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".tbr-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be created or written: {e.strerror or e}") from None
    return path
