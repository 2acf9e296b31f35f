"""`gpuctl-coordinator backup` and `restore` for the SQLite default: the whole state dir in one tar.gz.

A backup is taken while the coordinator runs. The database comes first, copied with SQLite's online backup
API (one step, so one consistent snapshot, while writers go on in WAL mode); then the rest of the state dir:
logs, file archives, the CA and server keys, the secrets key, the tokens. Logs only grow and archives are
renamed into place whole, so the copies hold at least every byte the snapshot's jobs had acknowledged. The
archive's first member is a manifest naming the store's schema version, so a restore can refuse a backup
newer than its code before unpacking anything.

A restore goes into a state dir no coordinator runs on (it holds the coordinator's lock meanwhile) that is
empty, or whose contents `force` replaces. It unpacks beside the state dir first, checks the database, then
moves everything in: a damaged archive leaves the state dir as it was.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from coordinator.migrations import MIGRATIONS
from coordinator.server import LOCK_FILE
from shared.state_lock import hold_state_dir

MANIFEST = "gpuctl-backup.json"
FORMAT = 1  # of the archive's layout; a restore refuses another
DB_FILE = "coordinator.db"
_NOT_COPIED = {DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal", LOCK_FILE}


class BackupError(Exception):
    """A backup or restore refused or failed; the message is one line that names the file or dir."""


@dataclass(frozen=True)
class Summary:
    schema_version: int
    files: int  # besides the database
    size_bytes: int  # of the archive


def backup(state_dir: Path, out: Path, db: Path | None = None) -> Summary:
    """Write a backup of `state_dir` and its database `db` (by default in it; its coordinator may be
    running) to `out`, atomically: a reader of `out` sees the old file or the whole new one. The archive
    is readable by its owner only (it holds the CA key and the secrets key)."""
    db = db or state_dir / DB_FILE
    if not db.is_file():
        raise BackupError(f"{db}: no coordinator database here")
    if out.resolve().is_relative_to(state_dir.resolve()):
        raise BackupError(f"{out}: a backup must be written outside the state dir it copies")
    partial = out.with_name(f".{out.name}.partial")
    try:
        with tempfile.TemporaryDirectory(prefix=".gpuctl-backup-", dir=out.parent) as temp:
            snapshot = Path(temp) / DB_FILE
            version = _snapshot(db, snapshot)
            snapshot.chmod(0o600)  # it holds jobs' secrets, as the live one does
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                with tarfile.open(fileobj=f, mode="w:gz") as tar:
                    manifest = {"format": FORMAT, "schema_version": version, "created_at": time.time()}
                    _add_bytes(tar, MANIFEST, json.dumps(manifest).encode())
                    tar.add(snapshot, DB_FILE)
                    copied = _add_state(tar, state_dir)
                f.flush()
                os.fsync(f.fileno())
        os.replace(partial, out)
    except OSError as exc:
        raise BackupError(f"{out}: cannot write the backup: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return Summary(version, copied, out.stat().st_size)


def _snapshot(db: Path, to: Path) -> int:
    """Copy the live database to `to` in one step of the backup API; answer its schema version."""
    source = sqlite3.connect(db)
    try:
        copy = sqlite3.connect(to)
        try:
            source.backup(copy)
            return int(copy.execute("PRAGMA user_version").fetchone()[0])
        finally:
            copy.close()
    finally:
        source.close()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _add_state(tar: tarfile.TarFile, state_dir: Path) -> int:
    """Everything of the state dir but the live database and the lock, in name order; answers the number
    of files. Uploads in progress are left out, and a file deleted meanwhile (an archive pruned) skipped."""
    copied = 0
    for path in sorted(state_dir.rglob("*")):
        name = path.relative_to(state_dir)
        if str(name) in _NOT_COPIED or path.name.startswith(".upload-") or path.is_symlink():
            continue
        with contextlib.suppress(FileNotFoundError):
            tar.add(path, str(name), recursive=False)
            copied += path.is_file()
    return copied


def restore(archive: Path, state_dir: Path, force: bool = False, db: Path | None = None) -> Summary:
    """Unpack the backup `archive` into `state_dir`, its database to `db` (by default in it). Refuses
    while a coordinator runs there, if the state dir or the database holds anything (unless `force`: then
    it is replaced), or if the backup's schema is newer than this code's."""
    db = db or state_dir / DB_FILE
    with hold_state_dir(state_dir, LOCK_FILE, "gpuctl-coordinator"):
        present = [p for p in state_dir.iterdir() if p.name != LOCK_FILE]
        present += [p for p in _database_files(db) if p.exists() and p not in present]
        if present and not force:
            raise BackupError(
                f"{state_dir}: not empty; restore into an empty state dir, or pass --force to replace it"
            )
        with tempfile.TemporaryDirectory(prefix=f".{state_dir.name}.restore-", dir=state_dir.parent) as temp:
            staged = Path(temp)
            version, files = _unpack(archive, staged)
            for path in present:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            shutil.move(staged / DB_FILE, db)  # another file system, where `database:` names one
            for path in staged.iterdir():
                os.replace(path, state_dir / path.name)
        state_dir.chmod(0o700)  # its database holds jobs' secrets
    return Summary(version, files, archive.stat().st_size)


def _database_files(db: Path) -> list[Path]:
    return [db.with_name(db.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]


def _unpack(archive: Path, into: Path) -> tuple[int, int]:
    """Unpack and check the backup; answers its schema version and its number of files."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            first = tar.next()
            manifest = tar.extractfile(first) if first is not None and first.name == MANIFEST else None
            if manifest is None:
                raise BackupError(f"{archive}: not a gpuctl-coordinator backup (no {MANIFEST} first)")
            version = _checked_version(archive, json.loads(manifest.read()))
            members = [m for m in tar.getmembers() if m.name != MANIFEST]
            tar.extractall(into, members, filter="data")
    except (OSError, tarfile.TarError, json.JSONDecodeError, EOFError) as exc:
        raise BackupError(f"{archive}: cannot read the backup: {exc}") from None
    db = into / DB_FILE
    if not db.is_file() or _quick_check(db) != "ok":
        raise BackupError(f"{archive}: the backup's database is missing or damaged")
    return version, sum(m.isfile() for m in members) - 1


def _checked_version(archive: Path, manifest: object) -> int:
    known = len(MIGRATIONS)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{archive}: a backup format this gpuctl-coordinator does not read")
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise BackupError(f"{archive}: schema_version: missing from the backup's manifest")
    if version > known:
        raise BackupError(
            f"{archive}: its store is at schema version {version}, newer than this gpuctl-coordinator's "
            f"({known}); restore it with the gpuctl version that made it, or a newer one"
        )
    return version


def _quick_check(db: Path) -> str:
    try:
        conn = sqlite3.connect(db)
        try:
            return str(conn.execute("PRAGMA quick_check").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
