"""File helpers shared by every module.

Atomic writes: a reader never sees a half-written file or folder (write under a temp name in the
same folder, then rename): ``atomic_write_text`` / ``atomic_write_json`` for text, ``atomic_file``
for a file another library writes (safetensors, matplotlib), ``atomic_dir`` for a folder.
``files_under``: the regular files of a folder, a FIFO, socket or device among them an error.
``read_json``: a JSON file whose problems (missing, not UTF-8, bad JSON) are one line naming the
file, and the line and column for bad JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path


class SpecialFileError(ValueError):
    """A FIFO, socket or device where a file was expected: reading it would block or never end."""


def files_under(root: Path, keep: Callable[[Path], bool]) -> list[Path]:
    """Sorted files under ``root`` (recursively) for which ``keep`` holds. One of them that is not a
    regular file is an error naming it, never a read that hangs or a silent skip."""
    out = []
    for p in sorted(Path(root).rglob("*")):
        if not keep(p):
            continue
        try:
            mode = p.stat().st_mode
        except OSError:
            continue  # a dangling link: nothing to read
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise SpecialFileError(
                f"{p}: a FIFO, socket or device, not a regular file (reading it would block); move it out of {root}"
            )
        out.append(p)
    return out


class JsonFileError(ValueError):
    """A JSON file that cannot be read; the message is one line naming the file (and line:column)."""


def read_json(path: str | Path):
    """Parse a JSON file; raise JsonFileError naming ``path`` (and ``line:column`` for bad JSON)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise JsonFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise JsonFileError(f"{path}: is a folder, expected a JSON file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise JsonFileError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JsonFileError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise JsonFileError(f"{path}: JSON nested too deeply to parse") from None


def umask_modes(path: Path) -> None:
    """Give ``path`` (a file, or a folder and all it holds) the modes the user's umask asks for.
    ``mkstemp``/``mkdtemp`` make 0600 files and 0700 folders, and safetensors writes 0600 weights:
    without this, a model saved on a shared machine is unreadable by everyone else."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if p.is_symlink():
            continue
        mode = 0o777 if p.is_dir() else 0o666 | (stat.S_IMODE(p.stat().st_mode) & 0o111)
        os.chmod(p, mode & ~mask)


@contextlib.contextmanager
def atomic_file(path: str | Path):
    """Yield a temp path next to ``path``; on success it is renamed to ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask_modes(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_dir(final: str | Path):
    """Context manager: build a folder under a temp name, rename it into place on success."""
    final = Path(final)

    class _Dir:
        def __enter__(self):
            final.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
            return self.tmp

        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            umask_modes(self.tmp)
            if final.exists():
                old = final.with_name(f".{final.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(self.tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, final)
            return False

    return _Dir()


def cache_root() -> Path:
    """Where prod-unlearn keeps what it can recompute (reference passes, evaluations):
    ``PROD_UNLEARN_CACHE``, else ``$XDG_CACHE_HOME/prod-unlearn`` (``~/.cache/prod-unlearn``)."""
    return Path(
        os.environ.get("PROD_UNLEARN_CACHE")
        or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "prod-unlearn")
    )
