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


class ParameterError(UserError):
    """A bad value of one named parameter of the Python API.

    ``what`` and ``fix`` are templates: ``{name}`` becomes the parameter's name and ``{set}`` an
    assignment to it. ``str(err)`` names the Python parameter (``min_coverage must …``, ``e.g.
    min_coverage=0.99``); a CLI re-words it with its own flag through :meth:`as_option`, so flag
    names live only in ``memlaw/cli/``."""

    def __init__(self, param: str, what: str, fix: str | None = None):
        self.param, self._what, self._fix = param, what, fix
        what, fix = self._texts(param, f"{param}=")
        super().__init__(what, fix=fix)

    def _texts(self, name: str, assign: str) -> tuple[str, str | None]:
        def fill(t: str) -> str:  # str.replace, not format: a bad value may hold braces itself
            return t.replace("{name}", name).replace("{set}", assign)

        return fill(self._what), (fill(self._fix) if self._fix else None)

    def as_option(self, option: str) -> UserError:
        """The same error naming a command-line option (``--min-coverage``) instead."""
        what, fix = self._texts(option, f"{option} ")
        return UserError(what, fix=fix)
