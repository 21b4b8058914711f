"""The exception types of the I/O layer for problems the user has to fix.

One type per kind, so that callers map them to exit codes by type, never by message text:
InputError -> exit 3 (bad input), OutputLocationError -> exit 2 (the output path given is unusable).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: an unreadable, missing or unsuitable image.

    The message is meant to be shown to the user as it is: it names the problem (with the path and the
    observed sizes or values) and says what to do about it, e.g. "… is a 2D image (512 x 512); MaskMed needs a
    3D CT volume: export the whole series, not a single slice". Programming errors (wrong argument types, an
    image on the wrong grid) raise the usual ``TypeError`` / ``ValueError`` instead.
    """


class OutputLocationError(InputError):
    """The output path cannot be written: a file where a folder is needed, a read-only folder or file system,
    a folder that does not exist. Raised before any heavy work, so a user learns it in a second, not after the
    inference. A subclass of InputError so that older callers still catch it."""
