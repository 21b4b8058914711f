"""The one exception type of the I/O layer for input that the user has to fix."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: an unreadable, missing or unsuitable image.

    The message is meant to be shown to the user as it is: it names the problem (with the path and the
    observed sizes or values) and says what to do about it, e.g. "… is a 2D image (512 x 512); MaskMed needs a
    3D CT volume: export the whole series, not a single slice". Programming errors (wrong argument types, an
    image on the wrong grid) raise the usual ``TypeError`` / ``ValueError`` instead.
    """
