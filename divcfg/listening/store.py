"""Durable answers: SQLite in WAL mode with ``synchronous=FULL``, parameterised SQL only.

Tables:

- ``raters(rater_id PK, rater_index UNIQUE, created_at)``: raters numbered in order of arrival (the
  number picks their trials, see ``divcfg.listening.design.assign``);
- ``assignments(rater_id, position, trial_id, served_at)``: each rater's trial list, fixed on arrival;
  ``served_at`` is when the trial was first shown;
- ``answers``: one row per answer with the rater, trial, the three ratings or the choice, and the
  timestamps (``served_at`` copied from the assignment, ``answered_at`` = commit time, ``client_ms``
  = time on the trial as the page measured it). ``idempotency_key`` is UNIQUE and (rater, trial) is
  UNIQUE: a resent answer (same key) is stored once, a second, different answer to one trial is refused.

An answer is durable when :meth:`Store.save_answer` returns: the transaction has committed and, with
``synchronous=FULL``, the WAL has been fsynced. Each thread uses its own connection.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    rater_id TEXT PRIMARY KEY, rater_index INTEGER NOT NULL UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    rater_id TEXT NOT NULL REFERENCES raters(rater_id), position INTEGER NOT NULL, trial_id TEXT NOT NULL,
    served_at TEXT, PRIMARY KEY (rater_id, position), UNIQUE (rater_id, trial_id));
CREATE TABLE IF NOT EXISTS answers (
    answer_id INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    rater_id TEXT NOT NULL REFERENCES raters(rater_id),
    trial_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('quality', 'diversity')),
    acoustic INTEGER CHECK (acoustic BETWEEN 1 AND 5),
    adherence INTEGER CHECK (adherence BETWEEN 1 AND 5),
    musicality INTEGER CHECK (musicality BETWEEN 1 AND 5),
    choice TEXT CHECK (choice IN ('A', 'B')),
    served_at TEXT, answered_at TEXT NOT NULL, client_ms INTEGER,
    UNIQUE (rater_id, trial_id));
"""

ANSWER_COLUMNS = ("answer_id", "rater_id", "trial_id", "kind", "acoustic", "adherence", "musicality", "choice",
                  "served_at", "answered_at", "client_ms", "idempotency_key")


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Conflict(Exception):
    """The answer cannot be stored (already answered with another key, or a key reused)."""


class Store:
    def __init__(self, path: str | Path):
        self.path = str(path)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        con = self._con()
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"SQLite refused WAL mode for {self.path} (got {mode})")
        con.executescript(SCHEMA)

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA busy_timeout=30000")
            con.row_factory = sqlite3.Row
            self._local.con = con
        return con

    def _write(self, fn):
        """Run ``fn(con)`` in one IMMEDIATE transaction (committed before returning)."""
        con = self._con()
        with self._write_lock:
            con.execute("BEGIN IMMEDIATE")
            try:
                out = fn(con)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        return out

    # ------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._con().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self._write(lambda con: con.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value)))

    def count_answers(self) -> int:
        return self._con().execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def rater_exists(self, rater_id: str) -> bool:
        return self._con().execute("SELECT 1 FROM raters WHERE rater_id = ?", (rater_id,)).fetchone() is not None

    def ensure_rater(self, rater_id: str, assign) -> list[str]:
        """The rater's trial ids, creating the rater (next index, ``assign(index)``) on first visit."""
        def tx(con):
            rows = con.execute("SELECT trial_id FROM assignments WHERE rater_id = ? ORDER BY position",
                               (rater_id,)).fetchall()
            if rows:
                return [r[0] for r in rows]
            index = con.execute("SELECT COALESCE(MAX(rater_index) + 1, 0) FROM raters").fetchone()[0]
            con.execute("INSERT INTO raters (rater_id, rater_index, created_at) VALUES (?, ?, ?)",
                        (rater_id, index, now_utc()))
            trials = list(assign(index))
            con.executemany("INSERT INTO assignments (rater_id, position, trial_id) VALUES (?, ?, ?)",
                            [(rater_id, i, t) for i, t in enumerate(trials)])
            return trials

        rows = self._con().execute("SELECT trial_id FROM assignments WHERE rater_id = ? ORDER BY position",
                                   (rater_id,)).fetchall()
        return [r[0] for r in rows] if rows else self._write(tx)

    def progress(self, rater_id: str) -> tuple[int, int, str | None]:
        """(answered, total, next unanswered trial id or None)."""
        con = self._con()
        total = con.execute("SELECT COUNT(*) FROM assignments WHERE rater_id = ?", (rater_id,)).fetchone()[0]
        answered = con.execute("SELECT COUNT(*) FROM answers WHERE rater_id = ?", (rater_id,)).fetchone()[0]
        row = con.execute(
            "SELECT a.trial_id FROM assignments a LEFT JOIN answers x ON x.rater_id = a.rater_id "
            "AND x.trial_id = a.trial_id WHERE a.rater_id = ? AND x.answer_id IS NULL ORDER BY a.position LIMIT 1",
            (rater_id,)).fetchone()
        return answered, total, None if row is None else row[0]

    def mark_served(self, rater_id: str, trial_id: str) -> None:
        self._write(lambda con: con.execute(
            "UPDATE assignments SET served_at = ? WHERE rater_id = ? AND trial_id = ? AND served_at IS NULL",
            (now_utc(), rater_id, trial_id)))

    def is_assigned(self, rater_id: str, trial_id: str) -> bool:
        return self._con().execute("SELECT 1 FROM assignments WHERE rater_id = ? AND trial_id = ?",
                                   (rater_id, trial_id)).fetchone() is not None

    def save_answer(self, key: str, rater_id: str, trial_id: str, kind: str, ratings: dict | None,
                    choice: str | None, client_ms: int | None) -> tuple[dict, bool]:
        """Store one answer; returns (row, duplicate). ``duplicate`` = this key was stored before
        (nothing new written). Raises :class:`Conflict` for a key reused on another trial or a
        trial already answered under another key."""
        ratings = ratings or {}

        def tx(con):
            old = con.execute("SELECT * FROM answers WHERE idempotency_key = ?", (key,)).fetchone()
            if old is not None:
                if old["rater_id"] != rater_id or old["trial_id"] != trial_id:
                    raise Conflict("this idempotency key was used for another answer")
                return dict(old), True
            if con.execute("SELECT 1 FROM answers WHERE rater_id = ? AND trial_id = ?",
                           (rater_id, trial_id)).fetchone():
                raise Conflict("this trial was already answered")
            served = con.execute("SELECT served_at FROM assignments WHERE rater_id = ? AND trial_id = ?",
                                 (rater_id, trial_id)).fetchone()
            con.execute(
                "INSERT INTO answers (idempotency_key, rater_id, trial_id, kind, acoustic, adherence, musicality, "
                "choice, served_at, answered_at, client_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, rater_id, trial_id, kind, ratings.get("acoustic"), ratings.get("adherence"),
                 ratings.get("musicality"), choice, served[0] if served else None, now_utc(), client_ms))
            return dict(con.execute("SELECT * FROM answers WHERE idempotency_key = ?", (key,)).fetchone()), False

        return self._write(tx)

    def answers(self) -> list[dict]:
        rows = self._con().execute(
            "SELECT answer_id, rater_id, trial_id, kind, acoustic, adherence, musicality, choice, served_at, "
            "answered_at, client_ms, idempotency_key FROM answers ORDER BY answer_id")
        return [dict(r) for r in rows]

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
