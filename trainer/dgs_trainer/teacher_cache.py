"""A disk cache of a teacher's outputs, so that a resumed or repeated distillation does not run the teacher again.

One SQLite file per teacher and preprocessing, under ``<dgs cache folder>/teacher-outputs/`` (the folder
`dgs_sdk.engine_cache.cache_dir` names: ``$DGS_CACHE_DIR``, else ``$XDG_CACHE_HOME/dgs``, else ``~/.cache/dgs``).
The file's name is the sha256 of the teacher's checksum, the preprocessing spec and how the teacher computes
(`Teacher.compute`). Inside, a row per model input: its key is a hash of the input tensor's bytes, so an image
seen under the same augmentation (the training data's augmentation is seeded per image and epoch) is the same key,
and a changed image, augmentation or preprocessing can never be given a stale logit. A row holds the logit and,
once asked for, the image embedding (float16).

A damaged cache file is set aside and started afresh, with a warning: it only ever costs teacher time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from pathlib import Path

import numpy as np
import torch

from dgs_sdk.engine_cache import TEACHER_OUTPUTS_DIR, cache_dir
from dgs_sdk.preprocess import PreprocessSpec

from .errors import TrainError

__all__ = ["CACHE_FORMAT", "TeacherCache", "cache_file", "input_keys"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def cache_file(checksum: str, spec: PreprocessSpec, compute: str) -> Path:
    """Where the outputs of the teacher ``checksum`` on inputs made by ``spec``, computed as ``compute``, live."""
    fields = {"format": CACHE_FORMAT, "teacher": checksum, "preprocess": spec.to_dict(), "compute": compute}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return cache_dir() / TEACHER_OUTPUTS_DIR / f"{key}.sqlite"


def input_keys(images: torch.Tensor) -> list[bytes]:
    """A 16-byte BLAKE2b digest per model input ``[B, 3, S, S]`` of its float32 bytes."""
    rows = images.detach().float().cpu().contiguous().numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]


class TeacherCache:
    """The cached logits (and embeddings) of one teacher; `lookup` and `store` a batch at a time."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrainError(f"{self.path.parent}: cannot hold the teacher's cache ({e.strerror}); set DGS_CACHE_DIR "
                             "to a writable folder, or use --no-teacher-cache") from None
        self.hits = self.misses = 0
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as e:
            damaged = self.path.with_name(self.path.name + ".damaged")
            log.warning("%s: the teacher cache is damaged (%s); set aside as %s and started afresh", self.path, e,
                        damaged.name)
            os.replace(self.path, damaged)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=60)
            db.execute("CREATE TABLE IF NOT EXISTS outputs (input BLOB PRIMARY KEY, logit REAL NOT NULL, "
                       "features BLOB)")
            db.execute("SELECT input, logit, features FROM outputs LIMIT 1").fetchall()  # a damaged file fails here
            db.commit()
        except sqlite3.OperationalError as e:
            if any(word in str(e) for word in ("unable to open", "readonly", "locked")):
                raise TrainError(f"{self.path}: cannot write the teacher's cache ({e}); set DGS_CACHE_DIR to a "
                                 "writable folder, or use --no-teacher-cache") from None
            raise sqlite3.DatabaseError(str(e)) from None
        return db

    def close(self) -> None:
        self._db.close()

    def lookup(self, keys: list[bytes], width: int | None) -> tuple[list[float | None], list[np.ndarray | None]]:
        """The cached logit of each key (None when absent) and, when an embedding ``width`` is asked for, its
        embedding (None when absent); a row whose embedding was never stored, or is not ``width`` wide (a file
        edited by hand), counts as absent then."""
        features = width is not None
        rows = {}
        for start in range(0, len(keys), 500):  # SQLite bounds the parameters of one statement
            chunk = keys[start:start + 500]
            rows.update((bytes(k), (logit, blob)) for k, logit, blob in self._db.execute(
                f"SELECT input, logit, features FROM outputs WHERE input IN ({','.join('?' * len(chunk))})", chunk))
        logits, embeddings = [], []
        for key in keys:
            logit, blob = rows.get(key, (None, None))
            if features and (blob is None or len(blob) != 2 * width):
                logit, blob = None, None
            logits.append(logit)
            embeddings.append(np.frombuffer(blob, np.float16).astype(np.float32) if features and blob else None)
        found = sum(logit is not None for logit in logits)
        self.hits += found
        self.misses += len(keys) - found
        return logits, embeddings

    def store(self, keys: list[bytes], logits: torch.Tensor, features: torch.Tensor | None) -> None:
        """Keep the teacher's outputs of ``keys`` (replacing what was there)."""
        logit_values = logits.detach().float().cpu().tolist()
        blobs = ([None] * len(keys) if features is None else
                 [row.tobytes() for row in features.detach().cpu().numpy().astype(np.float16)])
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO outputs (input, logit, features) VALUES (?, ?, ?)",
                                 list(zip(keys, logit_values, blobs, strict=True)))
