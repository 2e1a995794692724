"""Path arguments of the tools, checked before any work: each failure is one
:class:`ToolInputError` naming the flag, the path and the fix; :func:`run_tool` prints it (and the
project's other input errors) as one line, exit status 2, no traceback."""
from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path
from typing import Callable, Optional

from radkd_d2.errors import (
    ConfigError,
    CorruptCheckpointError,
    DataError,
    DiskFullError,
    ExportError,
    RunFolderError,
    TeacherFault,
    TeacherLoadError,
    UnknownDistillLossError,
    WeightConversionError,
    WeightsLoadError,
)


class ToolInputError(ValueError):
    """A tool's path argument cannot be used; the message names the flag and the path."""


# errors that name a bad input and its fix: shown as one message (exit status 2)
# faults met while a run runs (a damaged file, a changed teacher, a full disk): one line too
RUN_FAULTS = (DataError, TeacherFault, DiskFullError)

USER_ERRORS = (ToolInputError, ConfigError, RunFolderError, WeightsLoadError, TeacherLoadError,
               CorruptCheckpointError, UnknownDistillLossError, WeightConversionError, ExportError,
               FileNotFoundError, DiskFullError)  # fmt: skip


def existing_file(path, flag: str, what: str = "file") -> Path:
    """``path`` as a Path, or ToolInputError when it is missing or not a file."""
    p = Path(path)
    if p.is_dir():
        raise ToolInputError(f"{flag} {p}: is a folder, not a {what}")
    if not p.is_file():
        raise ToolInputError(f"{flag} {p}: no such {what}")
    return p


def readable_checkpoint(path, flag: str) -> Path:
    """A ``.pth`` that reads back whole (torch.save's zip archive, CRC-checked, or a legacy
    pickle); ToolInputError naming it otherwise (truncated, damaged, not a checkpoint)."""
    p = existing_file(path, flag, "checkpoint")
    if p.suffix == ".pkl":
        return p
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            bad = str(e)
        if bad is None:
            return p
        raise ToolInputError(f"{flag} {p}: damaged checkpoint (its archive fails the check at {bad})")
    with open(p, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":  # a pickle (torch.save's legacy format)
        return p
    raise ToolInputError(
        f"{flag} {p}: not a checkpoint (neither torch.save's zip archive nor a pickle: truncated, "
        "or another kind of file)"
    )


def writable_output(path, flag: str, *, folder: bool) -> Path:
    """``path`` can be written (created if needed) as a folder (``folder``) or a file: its
    nearest existing parent is a writable folder, and it is not a file where a folder is meant
    (or the reverse). Creates nothing."""
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            raise ToolInputError(f"{flag} {p}: is a file, not a folder")
        if not folder and p.is_dir():
            raise ToolInputError(f"{flag} {p}: is a folder, not a file")
        target = p if folder else p.parent
    else:
        target = p.parent
        while not target.exists():
            target = target.parent
        if not target.is_dir():
            raise ToolInputError(f"{flag} {p}: {target} is a file, so {p} cannot be created")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ToolInputError(f"{flag} {p}: {target} is not writable")
    return p


def run_tool(main: Callable, argv=None, name: Optional[str] = None):
    """Run a tool's ``main``; the project's input errors become one line on stderr and exit
    status 2."""
    try:
        return main(argv)
    except USER_ERRORS as e:
        prog = name or Path(sys.argv[0]).name
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
