"""The one exception type a user can cause.

A UserError carries a single line: what went wrong, where, and what to do. The CLIs print it and
exit 2; anything else escaping is a bug in memlaw, not bad input.
"""


class UserError(Exception):
    """Bad input or usage. ``str(err)`` is the whole message shown to the user."""

    exit_code = 2

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        parts = [f"{where}: {what}" if where else what]
        if fix:
            parts.append(fix)
        super().__init__(" — ".join(parts).replace("\n", " "))
