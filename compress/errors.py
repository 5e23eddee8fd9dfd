"""The one exception type for errors a user can cause (bad input, bad options, missing files).

The CLI prints its message on one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""


class CompressError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""
