"""The one exception for bad input: a file, key or value a user gave that marvit cannot use.

Every public command catches :class:`InputError` at the top (``marvit.cli``), prints its message on one line
and exits with status 2, without a traceback (``--debug`` or ``MARVIT_DEBUG=1`` shows it). The message must
name the file, key or value and say what was expected. This module imports nothing.
"""

from __future__ import annotations


class InputError(ValueError):
    """A bad input; the message names the file, key or value and what was expected."""
