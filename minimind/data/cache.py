"""Tokenised datasets cached once as memory-mapped Arrow IPC files.

Cache: `<cache_dir>/<kind>-<stem>-<key>.arrow`, where key hashes the source file's path, mtime and size,
the tokenizer's fingerprint (its chat template included) and the dataset settings. Editing the data,
changing the tokenizer or a setting therefore rebuilds; anything else reuses the file, memory-mapped
(no copy, shared by processes on one machine).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa

from minimind.data.readers import ReadReport
from minimind.model import IGNORE_INDEX  # noqa: F401  (the one ignore label; re-exported by minimind.data)
from minimind.tokenizer import MiniMindTokenizer

logger = logging.getLogger(__name__)

PAD_ID = 0
CACHE_VERSION = 2  # bump when the on-disk layout or tokenisation logic changes


def default_cache_dir() -> Path:
    return Path(os.environ.get("MINIMIND_CACHE_DIR", "~/.cache/minimind-rl/data")).expanduser()


# ----- Arrow cache ------------------------------------------------------------------------

def cache_key(source: Path, tokenizer: MiniMindTokenizer, kind: str, settings: Mapping) -> str:
    st = source.stat()
    payload = {
        "v": CACHE_VERSION, "kind": kind, "path": str(source.resolve()),
        "mtime_ns": st.st_mtime_ns, "size": st.st_size,
        "tokenizer": tokenizer.fingerprint, "settings": dict(settings),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class CachedTable:
    table: pa.Table
    path: Path
    hit: bool  # True when an existing cache file was reused
    meta: dict[str, Any]  # build statistics stored alongside the data


def load_or_build(
    source: str | Path, tokenizer: MiniMindTokenizer, kind: str, settings: Mapping,
    cache_dir: str | Path | None, build: Callable[[], tuple[pa.Table, dict]],
) -> CachedTable:
    """Return the cached table for (source, tokenizer, settings), building it if needed."""
    src = Path(source)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: data file not found")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{kind}-{src.stem}-{cache_key(src, tokenizer, kind, settings)}.arrow"
    if path.is_file():
        try:
            table = _read_arrow(path)
            return CachedTable(table, path, True, _meta(table))
        except (pa.ArrowInvalid, OSError, ValueError) as e:  # torn/corrupt file: rebuild
            logger.warning("%s: unreadable cache file (%s); rebuilding", path, e)
    table, meta = build()
    table = table.replace_schema_metadata({"minimind": json.dumps(meta)}).combine_chunks()
    # write to a temp file then rename: a crash never leaves a half-written cache entry
    fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
    os.close(fd)
    try:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    table = _read_arrow(path)  # hand back the memory-mapped copy, same as on a hit
    return CachedTable(table, path, False, _meta(table))


def _read_arrow(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _meta(table: pa.Table) -> dict:
    raw = (table.schema.metadata or {}).get(b"minimind")
    return json.loads(raw) if raw else {}


def _single(col: pa.ChunkedArray) -> pa.Array:
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


class _Ragged:
    """Zero-copy view of an Arrow list<int> column: row i = values[offsets[i]:offsets[i+1]]."""

    def __init__(self, col: pa.ChunkedArray):
        arr = _single(col)
        self.offsets = arr.offsets.to_numpy()
        self.values = arr.values.to_numpy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]: self.offsets[i + 1]]


def _report_meta(report: ReadReport) -> dict:
    return {"n_ok": report.n_ok, "n_bad": report.n_bad, "issues": report.issues[:5],
            "by_reason": report.by_reason}


def _warn_on_hit(cached: CachedTable, source: str | Path) -> None:
    # The reader's warning was logged when the cache was built; repeat the summary so a
    # rerun that hits the cache does not hide bad lines.
    n_bad = cached.meta.get("read", {}).get("n_bad", 0)
    if cached.hit and n_bad:
        first = cached.meta["read"]["issues"][:3]
        logger.warning("%s: %d bad record(s) were skipped; first: %s", source, n_bad, first)


