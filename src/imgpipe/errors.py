"""Errors that mean "the input was wrong", as opposed to a bug.

Stage scripts and the CLI print these as one clear line and exit non-zero, without a traceback.
"""


class ImgpipeError(Exception):
    """A user-facing error: the message names the file, key or value that was wrong."""
