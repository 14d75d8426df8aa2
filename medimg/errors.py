"""The one base class of errors a user can cause and fix.

Entry points print a ``UserError`` as one message (what is wrong, and the fix) and exit non-zero without a
Python traceback; ``HYDRA_FULL_ERROR=1`` or ``MEDIMG_DEBUG=1`` shows the traceback too. Every module raises its
own subclass (``CheckpointError``, ``ConfigError``, ``DataError`` ...), so a message names its source.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, bad config, missing data or weights: something the user can fix; printed without a traceback."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (found when the config is read, before any data work)."""


class DataError(UserError, ValueError):
    """Data that cannot be used as given: empty or missing folders, unknown labels, unreadable images."""


class MissingDataError(UserError, FileNotFoundError):
    """Data that are not where the config says: a missing folder, file, or a data set not downloaded yet."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable, not written by medimg, or does not fit the data."""


class WriteError(UserError, OSError):
    """A file medimg could not write (a read-only folder, a full disk): names the path and what it holds."""


class DataExistsError(UserError, FileExistsError):
    """A folder that should be new or medimg's own but holds something else."""
