"""TensorFlow's start-up log, kept off a command's screen (``--verbose`` shows it).

Importing TensorFlow 2.21 on a machine without a GPU prints, from C++, before
its logging is set up::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, ...

and the first device use adds ``E0000 ... failed call to cuInit``: a new user
reads that as a failure (issue 24). ``TF_CPP_MIN_LOG_LEVEL=3`` silences the
``E0000`` line but not the first ones, which absl writes straight to file
descriptor 2 (measured: they appear at every level). So, for the commands,
``install`` sets level 3 and has the import of ``tensorflow`` run with file
descriptor 2 pointed at /dev/null; errors still surface, as Python
exceptions raised after the import's stderr is restored.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys


@contextlib.contextmanager
def stderr_silenced():
    """Point file descriptor 2 (C++ code writes there, not to ``sys.stderr``) at
    /dev/null for the block."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class _QuietLoader(importlib.abc.Loader):
    """A module's own loader, its execution run with stderr silenced."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with stderr_silenced():
            self.loader.exec_module(module)


class _QuietTensorflow(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` where Python would, and hands it a ``_QuietLoader``."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install(user_level: str | None = None) -> None:
    """Silence TensorFlow's start-up log in this process and the ones it starts.

    Args:
        user_level: ``TF_CPP_MIN_LOG_LEVEL`` as found before pcam was imported
            (``pcam.USER_TF_LOG_LEVEL``): 0 or 1, asking for more of the log,
            is kept; 2 is what pcam itself sets (and a process that imported
            pcam hands on to the commands it starts).
    """
    if "tensorflow" in sys.modules:
        return
    if user_level in (None, "2"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if not any(isinstance(f, _QuietTensorflow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorflow())
