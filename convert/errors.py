"""The two errors every converter raises: what the user can fix, and a conversion that failed its own check."""

from __future__ import annotations


class ConversionError(Exception):
    """A conversion that cannot be exact. The message names the key, shape, feature or flag involved."""


class VerificationError(ConversionError):
    """`verify=True` found the converted model outside its source's outputs: nothing was written. Exit status 1, not
    2: the input was fine, the conversion is what failed (a bug to report, with `--debug`)."""
