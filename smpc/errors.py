"""Errors a user can act on.

Every layer raises a subclass of :class:`UserError` for bad input (a malformed
file, a value out of range, a forged envelope); the CLI prints its message as
one line instead of a traceback. The message must say what is wrong and where.
"""


class UserError(Exception):
    """Bad input that the user or operator can fix; the message says how."""
