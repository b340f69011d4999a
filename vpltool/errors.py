"""Exceptions the CLI turns into one red line and exit code 2.

Anything that is *not* a :class:`VplError` is a bug and keeps its traceback.
"""

from __future__ import annotations


class VplError(Exception):
    """A user-fixable problem: bad input, wrong file, missing dependency. The message names the file and the fix."""


class ContractError(VplError):
    """A file does not honour the vpltool file contract (wrong kind, shape, classes or model)."""


class MissingDependencyError(VplError):
    """An optional dependency (e.g. the CRF extra) is not installed."""
