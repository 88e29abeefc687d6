"""The one exception type users see: a problem they can fix, said in one line."""


class PcamError(Exception):
    """A user-facing error: bad input, missing file, refused request.

    Scripts print its message as one line and exit non-zero, without a
    traceback (see ``pcam.cli.run``). Anything else is a bug and keeps its
    traceback.
    """
