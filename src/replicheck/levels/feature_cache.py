"""A persistent cache of embeddings, so that a training set is embedded once for many scans.

A scan of one training set against many generators embeds the same training images every time;
with ``--cache DIR`` the feature level looks each image up first and embeds only the misses.

- **Key**: the sha256 of the analysis-grid image exactly as the embedder receives it (little-endian
  float32, C order, with its shape), so a change anywhere upstream (file, normalisation, grid)
  is a miss, and a file renamed or copied into another set is a hit.
- **Namespace**: the embedder's ``name``, ``version`` and ``digest`` (a hash of its weights and
  settings), so a retrained or perturbed model never reuses another model's vectors. Old
  namespaces stay in the file; delete the folder to reclaim their space.
- **Storage**: one SQLite database per folder (:data:`FILENAME`, Python's stdlib ``sqlite3``),
  one row per (namespace, image hash) with the vector as a blob. Every batch is one transaction,
  so a crash loses at most the batch being written and never leaves a half-written row;
  concurrent scans read safely and their writes queue behind SQLite's file lock. Lookups go by
  batch (``WHERE image IN (...)``), so memory is bounded by one batch, never the whole cache.
  The default rollback journal (not WAL) is used because WAL needs shared memory, which network
  file systems (where a cluster's cache often lives) do not provide.

Connections are opened per batch and closed at once: the cache object holds only a path and the
namespace id, so it can be pickled to worker processes and used from any thread.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..embedders.common import image_hashes
from ..records import ReplicheckError

__all__ = ["FILENAME", "FeatureCache", "image_hashes"]

FILENAME = "features.sqlite"
FORMAT = "replicheck-feature-cache"
SCHEMA_VERSION = 1
DTYPE = "<f4"  # stored vectors: little-endian float32, whatever the machine
CHUNK = 500  # keys per `IN (...)` query, below SQLite's historical limit of 999 bound parameters
TIMEOUT_S = 120.0  # how long a writer waits for another scan's transaction on the same cache

_TABLES = {
    "meta": "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "embedders": "CREATE TABLE IF NOT EXISTS embedders (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                 "version TEXT NOT NULL, digest TEXT NOT NULL, dim INTEGER NOT NULL, dtype TEXT NOT NULL, "
                 "UNIQUE (name, version, digest))",
    "vectors": "CREATE TABLE IF NOT EXISTS vectors (embedder INTEGER NOT NULL, image BLOB NOT NULL, "
               "vector BLOB NOT NULL, UNIQUE (embedder, image))",  # rowid table: a 1 KiB row fits in its page
}




class FeatureCache:
    """The embeddings of one embedder in cache folder ``folder`` (created if needed).

    ``get`` returns the cached vectors of a batch of image hashes and which were found; ``put``
    stores new ones. ``hits``, ``misses`` and ``written`` count images since construction.
    Errors (folder not writable, corrupt database, vector of the wrong size) raise
    :class:`ReplicheckError` naming the database file.
    """

    def __init__(self, folder: str | Path, embedder):
        self.folder = Path(folder)
        self.path = self.folder / FILENAME
        self.namespace = {"name": str(embedder.name), "version": str(embedder.version),
                          "digest": str(embedder.digest)}
        self.dim = int(embedder.dim) * int(getattr(embedder, "views", 1))  # a multi-view embedder: its views side by side
        self.hits = self.misses = self.written = 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ReplicheckError(f"--cache {self.folder}: cannot create the feature cache folder "
                                  f"({error.strerror or error})") from None
        self.embedder_id = self._register()

    def get(self, hashes: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) float32 vectors of ``hashes`` (zero rows where missing) and (n,) bool: found."""
        vectors = np.zeros((len(hashes), self.dim), dtype=np.float32)
        found = np.zeros(len(hashes), dtype=bool)
        rows: dict[bytes, list[int]] = {}
        for row, key in enumerate(hashes):
            rows.setdefault(key, []).append(row)
        keys = list(rows)
        size = self.dim * np.dtype(DTYPE).itemsize
        with self._connect() as db:
            for start in range(0, len(keys), CHUNK):
                chunk = keys[start:start + CHUNK]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT image, vector FROM vectors WHERE embedder = ? AND image IN ({marks})"
                for key, blob in db.execute(query, [self.embedder_id, *chunk]):
                    if len(blob) != size:
                        raise ReplicheckError(f"{self.path}: corrupt feature cache: a vector of {len(blob)} bytes "
                                              f"where {self.dim} float32 values ({size} bytes) were expected; "
                                              f"delete the file or choose another --cache folder")
                    vectors[rows[key]] = np.frombuffer(blob, dtype=DTYPE)
                    found[rows[key]] = True
        self.hits += int(found.sum())
        self.misses += int((~found).sum())
        return vectors, found

    def put(self, hashes: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store (n, dim) ``vectors`` under ``hashes`` in one transaction; existing rows are kept."""
        vectors = np.asarray(vectors)
        if vectors.shape != (len(hashes), self.dim):
            raise ReplicheckError(f"embedder {self.namespace['name']!r} returned vectors of shape {vectors.shape} "
                                  f"for {len(hashes)} images; its dim is {self.dim}")
        blobs = np.ascontiguousarray(vectors, dtype=DTYPE)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR IGNORE INTO vectors (embedder, image, vector) VALUES (?, ?, ?)",
                           ((self.embedder_id, key, row.tobytes()) for key, row in zip(hashes, blobs)))
            db.execute("COMMIT")
        self.written += len(hashes)

    def describe(self) -> dict:
        """Where the cache lies and how it served this run, for summary.json."""
        return {"folder": str(self.folder), "file": str(self.path), "key": f"sha256 of the {DTYPE} analysis-grid image",
                "hits": self.hits, "misses": self.misses, "written": self.written}

    def _register(self) -> int:
        """Create the tables if needed, check the file is ours, and return the embedder's id."""
        ns = self.namespace
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                raise ReplicheckError(f"{self.path}: an SQLite database that is not a replicheck feature cache; "
                                      f"choose another --cache folder")
            for statement in _TABLES.values():
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?), ('schema_version', ?)",
                       (FORMAT, str(SCHEMA_VERSION)))
            meta = dict(db.execute("SELECT key, value FROM meta"))
            if meta.get("format") != FORMAT or meta.get("schema_version") != str(SCHEMA_VERSION):
                raise ReplicheckError(f"{self.path}: feature cache of format {meta.get('format')!r} version "
                                      f"{meta.get('schema_version')!r}; this replicheck reads {FORMAT!r} version "
                                      f"{SCHEMA_VERSION}; choose another --cache folder")
            db.execute("INSERT OR IGNORE INTO embedders (name, version, digest, dim, dtype) VALUES (?, ?, ?, ?, ?)",
                       (ns["name"], ns["version"], ns["digest"], self.dim, DTYPE))
            embedder_id, dim, dtype = db.execute(
                "SELECT id, dim, dtype FROM embedders WHERE name = ? AND version = ? AND digest = ?",
                (ns["name"], ns["version"], ns["digest"])).fetchone()
            db.execute("COMMIT")
        if (dim, dtype) != (self.dim, DTYPE):
            raise ReplicheckError(f"{self.path}: cached vectors of embedder {ns['name']!r} (digest {ns['digest'][:12]}) "
                                  f"are {dim}-d {dtype}, but the embedder gives {self.dim}-d {DTYPE}; "
                                  f"choose another --cache folder")
        return int(embedder_id)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode (transactions are explicit); SQLite errors name the file."""
        db = None
        try:
            db = sqlite3.connect(self.path, timeout=TIMEOUT_S, isolation_level=None)
            yield db
        except sqlite3.Error as error:
            if db is not None and db.in_transaction:
                try:
                    db.rollback()
                except sqlite3.Error:
                    pass  # closing the connection below rolls back too
            if isinstance(error, sqlite3.OperationalError):
                problem = (f"cannot read or write the feature cache ({error}); check that the folder is "
                           f"writable and on a file system with file locking")
            else:  # DatabaseError: not a database, disk image malformed, ...
                problem = (f"corrupt feature cache ({error}); delete the file or choose another --cache folder")
            raise ReplicheckError(f"{self.path}: {problem}") from None
        finally:
            if db is not None:
                db.close()
