"""Output directories that never lose a user's file.

fxpga writes a directory (``compile -o``, ``build -o``, a Markdown report's ``_files/``) only if
it is new, empty, or one that fxpga wrote before: such a directory holds a manifest,
``.fxpga-outputs.json``, of every file fxpga put there with its sha256. Work goes into a staging
directory beside the target; :meth:`OutputDir.commit` then moves it in:

- a new or empty target: the staging directory is renamed onto it, in one step;
- a target with a manifest: each new file is renamed over its old version, files of the old
  output that the new one lacks are removed, and the manifest is rewritten last. While files
  move, the manifest lists both the old and the new sha256 of each, so an interrupted commit
  leaves a directory that the next run still recognises as fxpga's.

A file that is not in the manifest, or that changed since fxpga wrote it, is never replaced or
removed: the command refuses, naming it, before any work is done. The empty path, ``/``, the
home directory, and the working directory and its ancestors are refused outright.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import FxpgaError

MANIFEST = ".fxpga-outputs.json"
SCHEMA = "fxpga.outputs"
# a manifest fxpga writes lists at most a few thousand short paths
MAX_MANIFEST_BYTES = 1 << 20
MAX_ENTRIES = 10_000
STAGING_PREFIX = ".fxpga-staging-"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _relpath_ok(rel: object) -> bool:
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return False
    parts = rel.split("/")
    return all(p not in ("", ".", "..") for p in parts)


def refuse_special(path: str | Path, opt: str = "-o") -> Path:
    """``path`` resolved, unless it is empty, ``/``, the home directory, or the working directory
    or one of its ancestors (writing there would mix outputs with everything else)."""
    if str(path) == "":
        raise FxpgaError(f"{opt} '': an empty path (is a variable unset?)")
    resolved = Path(path).resolve()
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if resolved == Path(resolved.anchor):
        raise FxpgaError(f"{opt} {path}: refusing to write into the root directory")
    if resolved == home:
        raise FxpgaError(f"{opt} {path}: refusing to write into the home directory")
    if resolved == cwd or resolved in cwd.parents:
        raise FxpgaError(
            f"{opt} {path}: refusing to write into the working directory or one above it; "
            f"name a new directory"
        )
    return resolved


def read_manifest(d: Path, opt: str = "-o") -> dict[str, list[str]] | None:
    """The manifest of directory ``d`` as {relative path: [acceptable sha256, ...]}, or None
    if there is none; a malformed one is an error (it is not safe to guess)."""
    m = d / MANIFEST
    if not m.exists() and not m.is_symlink():
        return None
    bad = f"{opt} {d}: its {MANIFEST} is not one fxpga wrote"
    if m.is_symlink() or not m.is_file():
        raise FxpgaError(f"{bad} (not a regular file)")
    if m.stat().st_size > MAX_MANIFEST_BYTES:
        raise FxpgaError(f"{bad} (larger than {MAX_MANIFEST_BYTES} bytes)")
    try:
        doc = json.loads(m.read_bytes())
    except (ValueError, RecursionError) as e:
        raise FxpgaError(f"{bad} ({type(e).__name__})") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if (
        not isinstance(doc, dict)
        or doc.get("schema") != SCHEMA
        or not isinstance(files, dict)
        or len(files) > MAX_ENTRIES
    ):
        raise FxpgaError(f"{bad} (expected schema {SCHEMA!r} with a 'files' table)")
    for rel, shas in files.items():
        if not _relpath_ok(rel) or rel == MANIFEST:
            raise FxpgaError(f"{bad} (entry {rel!r} is not a relative path inside it)")
        if (
            not isinstance(shas, list)
            or not shas
            or not all(isinstance(s, str) and len(s) == 64 for s in shas)
        ):
            raise FxpgaError(f"{bad} (entry {rel!r} has no sha256)")
    return files


def _no_symlink_below(root: Path, rel: str) -> bool:
    p = root
    for part in rel.split("/"):
        p = p / part
        if p.is_symlink():
            return False
    return True


class OutputDir:
    """A directory fxpga fills: validated when made (before the work), staged, then committed.

    ``with OutputDir(path) as staging: ...write into staging...`` commits on success and removes
    the staging directory on any exception (Ctrl-C included)."""

    def __init__(self, path: str | Path, opt: str = "-o", *, make_parents: bool = False):
        """``make_parents``: a missing parent directory is made when the work starts."""
        self.resolved = refuse_special(path, opt)
        self.path = Path(path)
        self.opt = opt
        self.make_parents = make_parents
        self.staging: Path | None = None
        self.check()

    def _where(self, rel: str = "") -> str:
        return f"{self.opt} {self.path}" + (f": '{rel}'" if rel else "")

    def check(self) -> dict[str, list[str]]:
        """What the target's manifest lists (empty for a new or empty directory); raises if fxpga
        may not write there."""
        p = self.path
        if p.is_symlink():
            raise FxpgaError(f"{self._where()}: is a symbolic link; name a real directory")
        if p.exists() and not p.is_dir():
            raise FxpgaError(f"{self._where()}: exists and is not a directory")
        if not p.parent.is_dir() and not (self.make_parents and not p.parent.exists()):
            raise FxpgaError(f"{self._where()}: directory '{p.parent}' does not exist")
        if not p.exists():
            return {}
        old = read_manifest(p, self.opt)
        if old is None:
            entries = sorted(e.name for e in os.scandir(p))
            if entries:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise FxpgaError(
                    f"{self._where()}: exists and holds files fxpga did not write ({shown}); "
                    f"name a new or empty directory"
                )
            return {}
        for rel, shas in old.items():
            f = p / rel
            if not _no_symlink_below(p, rel):
                raise FxpgaError(f"{self._where(rel)} is a symbolic link; fxpga wrote a file there")
            if f.is_file() and sha256_file(f) not in shas:
                raise FxpgaError(
                    f"{self._where(rel)} changed since fxpga wrote it; move it away to keep it"
                )
            if f.exists() and not f.is_file():
                raise FxpgaError(f"{self._where(rel)} is no longer a file")
        return old

    def __enter__(self) -> Path:
        return self.stage()

    def stage(self) -> Path:
        """A new, empty staging directory beside the target (removed by :meth:`discard`)."""
        try:
            if self.make_parents:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(
                tempfile.mkdtemp(dir=self.path.parent, prefix=f"{STAGING_PREFIX}{self.path.name}.")
            )
            os.chmod(self.staging, 0o777 & ~_umask())
        except OSError as e:
            self.discard()
            raise FxpgaError(f"{self._where()}: cannot write: {e.strerror or e}") from e
        return self.staging

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
            return False
        self.discard()
        if isinstance(exc, OSError):  # a full disk, a read-only file system
            raise FxpgaError(f"{self._where()}: cannot write: {exc.strerror or exc}") from exc
        return False

    def discard(self):
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def _staged_files(self) -> dict[str, str]:
        out = {}
        assert self.staging is not None
        for dirpath, dirnames, filenames in os.walk(self.staging):
            for name in dirnames:
                if Path(dirpath, name).is_symlink():
                    raise FxpgaError(f"{self._where()}: a staged directory is a symbolic link")
            for name in filenames:
                f = Path(dirpath, name)
                rel = f.relative_to(self.staging).as_posix()
                if rel == MANIFEST:
                    continue
                if f.is_symlink() or not f.is_file():
                    raise FxpgaError(f"{self._where(rel)}: staged output is not a regular file")
                out[rel] = sha256_file(f)
        return out

    def commit(self):
        """Move the staged files into the target (see the module docstring)."""
        assert self.staging is not None, "commit() outside the with block"
        try:
            self._commit()
        except OSError as e:
            raise FxpgaError(f"{self._where()}: cannot write: {e.strerror or e}") from e
        finally:
            self.discard()

    def _commit(self):
        old = self.check()  # again: the target may have changed while the work ran
        new = self._staged_files()
        target = self.path
        for rel in new:
            if target.exists() and rel not in old and (target / rel).exists():
                raise FxpgaError(f"{self._where(rel)} exists and fxpga did not write it")
            if (target / rel).is_dir():
                raise FxpgaError(f"{self._where(rel)} is a directory")
        if not target.exists() or (not old and not any(os.scandir(target))):
            _write_manifest(self.staging, {rel: [s] for rel, s in new.items()})
            try:
                os.rename(self.staging, target)  # onto an empty directory too
                self.staging = None
                return
            except OSError:
                if not target.is_dir():
                    raise
                old = self.check()  # someone filled it meanwhile: merge like any other
        both = {rel: sorted(set(old.get(rel, [])) | {s}) for rel, s in new.items()}
        for rel, shas in old.items():
            both.setdefault(rel, shas)
        _write_manifest(target, both)
        for rel in sorted(new):
            dst = target / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging / rel, dst)
        for rel in sorted(set(old) - set(new)):
            f = target / rel
            if f.is_file() and sha256_file(f) in old[rel]:
                f.unlink()
                _remove_empty_parents(target, f.parent)
        _write_manifest(target, {rel: [s] for rel, s in new.items()})


def _remove_empty_parents(root: Path, d: Path):
    while d != root and root in d.parents:
        try:
            d.rmdir()  # only when empty: a user's file in it keeps it
        except OSError:
            return
        d = d.parent


def _write_manifest(d: Path, files: dict[str, list[str]]):
    doc = {"schema": SCHEMA, "schema_version": 1, "files": dict(sorted(files.items()))}
    atomic_write(d / MANIFEST, (json.dumps(doc, indent=1) + "\n").encode())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes, opt: str = "-o"):
    """``data`` into ``path`` through a temporary file beside it, renamed into place; the
    temporary file is removed on any failure (a full disk, Ctrl-C)."""
    path = Path(path)
    if path.is_dir():
        raise FxpgaError(f"{opt} {path}: is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise FxpgaError(f"{opt} {path}: cannot write: {e.strerror or e}") from e
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise FxpgaError(f"{opt} {path}: cannot write: {e.strerror or e}") from e
        raise
