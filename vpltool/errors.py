"""Exceptions the CLI turns into one red line and exit code 2.

Anything that is *not* a :class:`VplError` is a bug and keeps its traceback, except a write that fails for lack of
space or permission (:func:`write_error`), which the user fixes, not the code.
"""

from __future__ import annotations

import errno
import os


class VplError(Exception):
    """A user-fixable problem: bad input, wrong file, missing dependency. The message names the file and the fix."""


class ContractError(VplError):
    """A file does not honour the vpltool file contract (wrong kind, shape, classes or model)."""


class MissingDependencyError(VplError):
    """An optional dependency (e.g. the CRF extra) is not installed."""


def install_extra(*extras: str) -> str:
    """The line that installs vpltool's optional ``extras`` (pyproject.toml's names) where vpltool is installed from
    its clone: ``pip install -e '.[sam3,activesam]' in vpltool's checkout``. vpltool is not on the package index, so
    ``pip install 'vpltool[sam3]'`` finds nothing; every message and doc that names an extra takes its line here."""
    return f"pip install -e '.[{','.join(extras)}]' in vpltool's checkout"


class VplWarning(UserWarning):
    """Input that is accepted but probably not what the user meant (an image with no labels, a blank image); the
    CLI prints it as one yellow ``warning:`` line on stderr and the run goes on."""


# errno -> (what happened, what to do, and whether "or choose another OPTION" is a fix too). Disk full and missing
# permissions are the user's to fix, not bugs.
_WRITE_ERRORS = {
    errno.ENOSPC: ("no space left on device", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space"),
    errno.EACCES: ("permission denied", "fix the folder's permissions"),
    errno.EPERM: ("operation not permitted", "fix the folder's permissions"),
    errno.EROFS: ("read-only file system", "make it writable"),
    errno.EFBIG: ("file too large (a file-size limit: `ulimit -f`, or the file system's own)", "raise the limit"),
}


def write_fix(code: int, option: str | None) -> str:
    """What to do about a failed write of errno ``code``: the fix, and choosing another ``option`` when the path
    came from one (a file the command names itself, such as ``metrics/pseudo_choice.json``, has none)."""
    base = _WRITE_ERRORS[code][1]
    if option is None:
        return base
    if code == errno.EROFS:
        return f"choose another {option}"
    if code == errno.EFBIG:
        return f"{base} or choose another {option} on another file system"
    return f"{base} or choose another {option}"


def write_error(path: str | os.PathLike | None, e: OSError, action: str = "writing",
                option: str | None = "--out") -> VplError | None:
    """The one-line error for a failed write the user can fix (disk full, no permission, read-only), else None.

    ``path`` is the file the user asked for (not a temporary name); the message reads
    ``no space left on device writing PATH: free space or choose another --out``, with the ``option`` the path came
    from (None: a file the command names itself; :func:`vpltool.io.option_for` finds it). ``action`` replaces
    "writing" for a permission error that may have come from a read.
    """
    what = _WRITE_ERRORS.get(e.errno)
    if what is None:
        return None
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):  # only ever a write
        action = "writing"
    where = f" {action} {path}" if path else ""
    return VplError(f"{what[0]}{where}: {write_fix(e.errno, option)}")
