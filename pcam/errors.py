"""The one exception type users see: a problem they can fix, said in one line;
and how such a line lists what it is about."""
from __future__ import annotations

from typing import Iterable

SHOW = 5  # how many names an error message lists before "..."


class PcamError(Exception):
    """A user-facing error: bad input, missing file, refused request.

    Scripts print its message as one line and exit non-zero, without a
    traceback (see ``pcam.commands.cli.run``). Anything else is a bug and keeps its
    traceback.
    """


def listed(items: Iterable, show: int = SHOW) -> str:
    """The first ``show`` of ``items``, then "... (N in all)" when there are more."""
    items = list(items)
    head = ", ".join(str(i) for i in items[:show])
    return head + (f", ... ({len(items)} in all)" if len(items) > show else "")
