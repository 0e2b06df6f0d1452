"""User-facing errors, and the helpers their messages share.

Every problem a user can cause (a bad config value, a missing data root, an unknown name) raises
:class:`KnnmixError` with a one-line message that names the bad value. The CLI prints it as
``knnmix: error: <message>`` and exits with status 2, without a traceback.
"""

from __future__ import annotations

import difflib
import errno
import os
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any


class KnnmixError(ValueError):
    """A problem with the user's input, reported in one line."""


class ConfigError(KnnmixError):
    """An invalid configuration: unknown key, wrong type or out-of-range value."""


class DataError(KnnmixError):
    """Missing, unreadable or inconsistent data."""


class CheckpointError(KnnmixError):
    """A torch file (checkpoint, weights, CIFAR-N labels) that is missing, unreadable, corrupt, foreign, or would run
    code if loaded."""


class DivergedError(KnnmixError):
    """The training loss stopped being a finite number."""


class KnnmixWarning(UserWarning):
    """Something the run can do, but probably not what the user meant (the CLI prints it as one line)."""


def warning_line(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    """``warnings.formatwarning`` for knnmix's commands and Ray workers: a :class:`KnnmixWarning` is one line,
    ``knnmix: warning: ...``, not the file, line number and source line of where it was raised."""
    return f"knnmix: warning: {message}\n" if issubclass(category, KnnmixWarning) else DEFAULT_WARNING_FORMAT(
        message, category, *args, **kwargs)


DEFAULT_WARNING_FORMAT = warnings.formatwarning


@contextmanager
def recording_warnings() -> Iterator[list[str]]:
    """Yield a list that gets the message of every :class:`KnnmixWarning` shown inside the block (in order, once
    each), shown as usual too: what a run records in its ``run.json``, so that a sweep can say what its trials
    warned of. A warning shown earlier in this process is shown (and kept) again: the filter this appends (the
    action Python takes anyway) resets Python's once-per-place registry, as a Ray actor may host one trial after
    another. One the filters ignore is not kept; the filters are not restored after (``catch_warnings`` would drop
    those a library imported inside the block adds), so the appended filter stays, ahead of any a caller appends
    later. Not for two threads at once: it swaps the process's ``warnings.showwarning``."""
    seen: list[str] = []
    show = warnings.showwarning

    def keep(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, KnnmixWarning) and str(message) not in seen:
            seen.append(str(message))
        show(message, category, *args, **kwargs)

    warnings.filterwarnings("default", category=KnnmixWarning, append=True)
    warnings.showwarning = keep
    try:
        yield seen
    finally:
        if warnings.showwarning is keep:
            warnings.showwarning = show


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the choice closest to a misspelt ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1) if isinstance(name, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def listing(items: Sequence[str]) -> str:
    """``"a, b, c, d, e (and 7 more)"``: the first five of ``items``, for error messages."""
    shown = ", ".join(items[:5])
    return shown + (f" (and {len(items) - 5} more)" if len(items) > 5 else "")


#: OSErrors a user mends by freeing space, and those of a path in the way or without permission.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
PATH_IN_THE_WAY = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EEXIST})


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """An exception's message (or a text) squeezed onto one line of at most ``limit`` characters, for error
    messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_tensors(path: str | os.PathLike[str], what: str, allowed: Iterable[Any] = ()) -> Any:
    """``torch.load`` of the ``what`` (e.g. ``"checkpoint"``) at ``path``: tensors and plain data only, plus the
    ``allowed`` globals, so no pickled code runs. A missing, unreadable or code-carrying file is a
    :class:`CheckpointError` that names it."""
    import torch

    path = Path(path).expanduser()  # '~' from a config file or --set, which no shell expanded
    if not path.is_file():
        raise CheckpointError(f"{what} {path} " + ("is a folder, not a file" if path.is_dir() else "not found"))
    with suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(path) as archive:  # torch.load skips the CRCs
        if (damaged := archive.testzip()) is not None:
            raise CheckpointError(f"cannot read {what} {path}: its part {damaged!r} fails its checksum (corrupt)")
    try:
        with torch.serialization.safe_globals(list(allowed)), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4": the error below says more
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling, truncated file, not a torch file, ...
        # torch's own words around the reason advise loading with weights_only=False: never for a file that fails
        reason = str(exc).split("trusted source.")[-1].split("your use case:")[-1].partition("Check the docum")[0]
        reason = reason.replace("WeightsUnpickler error:", "").strip()
        if "unsupported global" in str(exc).lower():
            raise CheckpointError(f"{what} {str(path)!r} holds objects other than tensors and plain data, which "
                                  "loading with torch.load(weights_only=True) refuses, since they could run code "
                                  f"({one_line(reason or exc, 200)})") from None
        raise CheckpointError(f"cannot read {what} {path} (truncated, corrupt or not a torch file): "
                              f"{one_line(reason.strip() or exc, 200)}") from None
