"""Safe writes: atomic files and directories, and the one rule for which output paths a command may use.

Atomic: a crash or a full disk leaves the old file or no file, never half of one. Temporary names carry
the writer's process id (`.NAME.PID.*.tmp`), so a later write of the same target removes what a killed
process left behind without touching the temporary file of a process that is still running.

Output paths (`check_output_file`, `check_output_dir`): onebert never deletes or overwrites what it did
not make. See OUTPUT_RULE.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from onebert.errors import OneBertError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and rename it over `path`.

    The temporary file lives in the same directory so the final rename is atomic on POSIX.
    On any exception the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    _make_parent(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the mode an ordinary open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        os_error = os_error_behind(exc)
        if os_error is None:
            raise
        raise OneBertError(f"{path}: could not write: {os_error.strerror or os_error}") from None


def os_error_behind(exc: BaseException) -> OSError | None:
    """The OSError (disk full, permission, ...) that `exc` is or wraps, else None.

    Writers such as torch.save's zip container turn a full disk into a RuntimeError whose context
    holds the OSError; the user needs to hear "No space left on device", not the container's words.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        if isinstance(exc, OneBertError):
            return None  # already a message for the user
        # Rust writers (safetensors' SafetensorError) carry the errno only in their text.
        rust = _RUST_OS_ERROR.search(str(exc))
        if rust:
            code = int(rust.group(1))
            return OSError(code, os.strerror(code))
        seen.add(id(exc))
        exc = exc.__cause__ if exc.__cause__ is not None or exc.__suppress_context__ else exc.__context__
    return None


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Let `writer` fill a temporary path (e.g. safetensors' save_file), then rename it into place."""
    with atomic_path(path) as tmp:
        writer(tmp)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- temporary names


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or not a pid at all): leave its file alone
    return True


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove onebert's temporaries (`.NAME.PID.RANDOM.tmp`, files or directories) in `directory` whose
    process is gone.

    A kill -9 during an atomic write leaves its temporary behind; the next model save into the same
    run directory (e.g. the resumed run writing final/ again) clears them. Names without a pid are from
    older versions of onebert (`.NAME.RANDOM.tmp`): stale as well. The temporaries of a process that
    is still running are left alone.
    """
    directory = Path(directory)
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not _is_temp_name(entry.name):
            continue
        parts = entry.name[:-len(".tmp")].rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and _pid_alive(int(parts[1])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden staging directory beside `path`; on success it replaces `path` whole.

    For a model directory (weights, config, tokenizer files): a full disk or a crash leaves the
    previous directory (or none), never a directory with half of its files; the staging directory
    is removed on failure, and one left by a killed process is removed by the next write.
    """
    path = Path(path)
    _make_parent(path)
    remove_stale_temps(path.parent)
    staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    try:
        yield staging
        retired = None
        if path.exists():
            retired = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
            os.replace(path, retired / path.name)
        os.replace(staging, path)
        fsync_dir(path.parent)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        os_error = os_error_behind(exc)
        if os_error is None:
            raise
        raise OneBertError(f"{path}: could not write: {os_error.strerror or os_error}") from None


def _make_parent(path: Path) -> None:
    """mkdir -p the parent, with a one-line error where part of it is a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), path.parent)
        raise OneBertError(f"{blocker}: is a file, not a directory (cannot write {path})") from None


# ----------------------------------------------------------------------------- which outputs a command may use

OUTPUT_RULE = ("an output path must be new, an empty directory, or something onebert made (a run, a data "
               "directory, a tokenizer, a plot, a predictions file); never an input of the same command or "
               "a model's files")

# Files of a model, a run, a data directory or a checkpoint: never the target of another output.
PROTECTED_NAMES = frozenset({
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "config.json", "vocab.txt",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "metadata.json", "state.pt",
    "manifest.json", "metrics.jsonl", "config.yaml",
})
PROTECTED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".onnx")


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path)).resolve()


def is_within(path: str | os.PathLike, directory: str | os.PathLike) -> bool:
    """Whether `path` is `directory` or lies inside it (symlinks resolved)."""
    path, directory = _absolute(path), _absolute(directory)
    return path == directory or directory in path.parents


def _check_not_input(path: Path, option: str, inputs: Iterable[str | os.PathLike], whole: bool) -> None:
    for given in inputs:
        if given is None or str(given) == "-":
            continue
        if is_within(given, path) if whole else _absolute(given) == _absolute(path):
            raise OneBertError(f"{path}: {option} {'holds' if whole and _absolute(given) != _absolute(path) else 'is'}"
                               f" an input of this command ({given}); writing there could destroy it, "
                               "choose another path")


def check_output_file(path: str | os.PathLike, option: str = "--output", *,
                      inputs: Iterable[str | os.PathLike] = (), suffix: str | None = None,
                      made_by_onebert: Callable[[Path], bool] | None = None, kind: str = "file") -> Path:
    """Check a file a command is about to write (atomically) before any work is done.

    Refused with one line: an existing directory, an input of the same command, a model's, run's or
    data directory's file (PROTECTED_NAMES / PROTECTED_SUFFIXES), a wrong `suffix`, and an existing
    file that `made_by_onebert` does not recognise as this kind of output (a PNG for a plot, JSON lines
    for predictions). An existing file of the right kind is replaced, as a re-run expects.
    """
    path = Path(path)
    _check_not_input(path, option, inputs, whole=False)
    if path.is_dir():
        example = path / ("out" + (suffix or ""))
        raise OneBertError(f"{path}: {option} is a directory; give a file name (e.g. {example})")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OneBertError(f"{blocker}: is a file, not a directory (cannot write {option} {path})")
    if suffix is not None and path.suffix.lower() != suffix:
        raise OneBertError(f"{path}: {option} must end in {suffix} ({kind}s are written as {suffix[1:].upper()})")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise OneBertError(f"{path}: {option} exists and is not a regular file")
        own_kind = suffix is not None and made_by_onebert is not None and made_by_onebert(path)
        if path.name in PROTECTED_NAMES or (path.name.lower().endswith(PROTECTED_SUFFIXES) and not own_kind):
            raise OneBertError(f"{path}: {option} would overwrite a model's, run's or data file, which onebert "
                               "never replaces; choose another path")
        if made_by_onebert is not None and not made_by_onebert(path):
            raise OneBertError(f"{path}: {option} exists and is not a {kind} onebert wrote; onebert does not "
                               "overwrite it (remove it or choose another path)")
    return path


def check_output_dir(path: str | os.PathLike, option: str = "--output", *,
                     inputs: Iterable[str | os.PathLike] = (),
                     made_by_onebert: Callable[[Path], bool] | None = None, kind: str = "directory") -> Path:
    """Check a directory a command writes into (or replaces) before any work is done.

    Accepted: absent, empty, or recognised by `made_by_onebert` as this kind of onebert output (by the
    files onebert writes there: a run's metrics.jsonl, a data directory's metadata.json, ...). Refused
    with one line: an existing file, a non-empty directory onebert did not make, and a directory that
    is or holds an input of the same command.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OneBertError(f"{path}: {option} exists and is not a directory")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OneBertError(f"{blocker}: is a file, not a directory (cannot write {option} {path})")
    _check_not_input(path, option, inputs, whole=True)
    if path.is_dir():
        entries = sorted(entry.name for entry in path.iterdir())
        if entries and (made_by_onebert is None or not made_by_onebert(path)):
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise OneBertError(f"{path}: {option} is a non-empty directory that is not a {kind} onebert made "
                               f"(it holds {shown}); onebert does not write into it, choose a new or empty "
                               "directory")
    return path


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def holds_only(directory: Path, names: Iterable[str], patterns: Iterable[str] = ()) -> bool:
    """Whether every entry of `directory` is one of `names`, matches a regex of `patterns`, or is one of
    onebert's hidden temporaries: what may be deleted with it."""
    names, compiled = set(names), [re.compile(p) for p in patterns]
    return all(entry.name in names or _is_temp_name(entry.name) or any(c.fullmatch(entry.name) for c in compiled)
               for entry in directory.iterdir())


RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "checkpoints", "final", "best", "curves.png",
               "tensorboard", "wandb", "mlruns")  # the last three: --report-to (onebert.train.tracking)
RUN_CONFIG_HEADER = "# onebert run configuration"


def looks_like_run_dir(directory: Path) -> bool:
    """A run directory of `onebert pretrain` / `finetune`: its metrics.jsonl, checkpoints/ or config.yaml."""
    if (directory / "metrics.jsonl").is_file() or (directory / "checkpoints").is_dir():
        return True
    try:
        with open(directory / "config.yaml", encoding="utf-8") as handle:
            return handle.read(len(RUN_CONFIG_HEADER)) == RUN_CONFIG_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def is_replaceable_run_dir(directory: Path) -> bool:
    """A run directory holding nothing but what a run writes, so that deleting it loses nothing of the user's."""
    return looks_like_run_dir(directory) and holds_only(directory, RUN_ENTRIES)


def replace_run_dir(directory: Path, option: str = "--overwrite") -> None:
    """Empty an earlier run directory so a new run starts in it (`finetune --overwrite`); refused with one line
    when it holds anything a run does not write, so nothing of the user's is ever deleted."""
    import shutil

    others = sorted(e.name for e in directory.iterdir() if e.name not in RUN_ENTRIES and not _is_temp_name(e.name))
    if not looks_like_run_dir(directory) or others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise OneBertError(f"{directory}: {option} replaces only a run directory onebert made and holding nothing "
                           f"else; this one {'also holds ' + shown if others else 'is not a run directory'}")
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def is_json_lines(path: Path) -> bool:
    """A file whose first line is a JSON object (or an empty file): what `onebert predict` writes."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 20)
    except OSError:
        return False
    if not first.strip():
        return path.stat().st_size == 0
    try:
        return isinstance(json.loads(first), dict)
    except (ValueError, RecursionError):
        return False


NPY_SIGNATURE = b"\x93NUMPY"


def is_embedding_array(path: Path) -> bool:
    """A NumPy file holding a 2-D float32 array: what `onebert embed` writes (a re-run may replace it)."""
    import numpy as np

    try:
        with open(path, "rb") as handle:
            if handle.read(len(NPY_SIGNATURE)) != NPY_SIGNATURE:
                return False
            handle.seek(0)
            major, _ = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
    except (OSError, ValueError):
        return False
    return len(shape) == 2 and dtype == np.float32

