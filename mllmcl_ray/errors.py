"""The error family a user can cause, and the one place commands turn it into exit code 2.

Every error a user can cause (a config value, a data file, a model path, the cluster's
resources, a results directory) is a `ConfigError` or one of its subclasses here; its
message is one line naming the thing and what to do. Commands run through `main_guard`,
which prints ``<prog>: error: <message>`` to stderr and returns exit code 2, with no
traceback (``--debug`` shows it). Anything else is a bug and keeps its traceback.

    ConfigError          a config key or value (config.py)
    ├── DataError        a data file or record (missing, empty, malformed, fully skipped)
    ├── ModelPathError   a model path / hub id / remote-code need
    │   └── ModelNotFoundError  a model that cannot be loaded (also a FileNotFoundError)
    ├── ResourceError    workers the cluster cannot place
    └── ResultsError     a results directory or report path
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from .config import ConfigError

__all__ = ["ConfigError", "DataError", "ModelPathError", "ModelNotFoundError", "ResourceError", "ResultsError",
           "USER_ERROR_EXIT", "main_guard", "one_line"]

USER_ERROR_EXIT = 2  # exit status of every user-caused error (argparse uses 2 as well)


class DataError(ConfigError):
    """A data file or record is missing, empty or malformed; the message says where and what."""


class ModelPathError(ConfigError):
    """A model path or hub id cannot be used as configured."""


class ModelNotFoundError(ModelPathError, FileNotFoundError):
    """A model or tokenizer could not be loaded from its path or hub id (also a
    FileNotFoundError, for callers that catch that)."""


class ResourceError(ConfigError):
    """The cluster cannot place what the run asks for."""


class ResultsError(ConfigError):
    """A results directory or report output cannot be read or written."""


def one_line(e: BaseException) -> str:
    """The message of `e` on one line (newlines folded)."""
    text = str(e) or type(e).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main_guard(fn: Callable[[], int | None], prog: str = "mllmcl", debug: bool = False,
               stream=None) -> int:
    """Run `fn()`; a user error (`ConfigError` family) prints one line and returns 2.

    `debug` prints the traceback as well. Returns `fn`'s status (None counts as 0). The
    study CLI and `mllmcl` both use this, so every command reports errors the same way.
    """
    stream = stream or sys.stderr
    try:
        rc = fn()
    except ConfigError as e:
        if debug:
            traceback.print_exc(file=stream)
        print(f"{prog}: error: {one_line(e)}", file=stream)
        return USER_ERROR_EXIT
    return 0 if rc is None else int(rc)


def user_error_in(exc: BaseException) -> ConfigError | None:
    """The user error (`ConfigError` family) that caused `exc`, if any: searched through
    causes, contexts and the wrappers Ray puts around worker errors (Ray Train's
    `worker_failures` / `controller_failure`, a task error's `cause`). Lets a backend
    re-raise a worker's DataError as the one-line error it is."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(e, ConfigError):
            return cause if isinstance(cause, ConfigError) else e
        nested = [e.__cause__, e.__context__, cause, getattr(e, "controller_failure", None)]
        nested += list((getattr(e, "worker_failures", None) or {}).values())
        todo.extend(x for x in nested if isinstance(x, BaseException))
    return None
