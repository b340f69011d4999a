"""Progress from Python: the CLI's bar (:func:`vpltool.cli.output.progress`, rich on a terminal) for the stage
functions and :meth:`vpltool.api.Segmenter.map`, shown by default on a terminal, off with ``progress=False``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


def shown(progress: bool | None) -> bool:
    """``progress`` None (the default): a bar where stderr is a terminal (or a Jupyter notebook), none in a script
    whose stderr goes to a file or a pipe; True: shown anyway (plain lines off a terminal, as the CLI's)."""
    if progress is not None:
        return bool(progress)
    import sys

    if getattr(sys.stderr, "isatty", lambda: False)():
        return True
    return "ipykernel" in sys.modules  # a notebook's stderr is no terminal, but rich draws its bar there


@contextmanager
def hooks(progress: bool | None, description: str, unit: str = "images"
          ) -> Iterator[tuple[Callable | None, Callable | None]]:
    """``(on_start, on_item)`` for a library function's hooks: the CLI's progress bar when :func:`shown`, else
    ``(None, None)`` (nothing printed); the block is one run (:func:`vpltool.io.naming_scope`)."""
    from ..io import naming_scope

    with naming_scope():  # one run: what it names by content, its reads are held to (vpltool.io.read_as_named)
        if not shown(progress):
            yield None, None
            return
        from ..cli.output import progress as bar

        with bar(description, unit) as (on_start, on_item):
            yield on_start, on_item


__all__ = ["hooks", "shown"]
