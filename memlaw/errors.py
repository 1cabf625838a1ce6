"""The exception types a user can cause.

A UserError carries a single line: what went wrong, where, and what to do. The CLIs print it and
exit 2; anything else escaping is a bug in memlaw, not bad input. A ParameterError is a UserError
about one argument of the Python API, worded for the CLI by its options.
"""

import re


class UserError(Exception):
    """Bad input or usage. ``str(err)`` is the whole message shown to the user."""

    exit_code = 2

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        parts = [f"{where}: {what}" if where else what]
        if fix:
            parts.append(fix)
        super().__init__(" — ".join(parts).replace("\n", " "))


class ParameterError(UserError):
    """A bad value of a named parameter of the Python API.

    ``what`` and ``fix`` are templates naming parameters: ``{name}`` (``param`` itself) or
    ``{name:other}``; ``{set}`` / ``{set:other}``, an assignment to it (``min_coverage=``); and
    ``{flag:other}``, a switch turned on (``force_base=True``). ``str(err)`` names the Python
    parameters; a CLI re-words the same error with its options through :meth:`as_option`, so
    flag names live only in ``memlaw/cli/``."""

    _SLOT = re.compile(r"\{(name|set|flag)(?::(\w+))?\}")

    def __init__(self, param: str, what: str, fix: str | None = None):
        self.param, self._what, self._fix = param, what, fix
        what, fix = self._render({"name": str, "set": "{}=".format, "flag": "{}=True".format})
        super().__init__(what, fix=fix)

    def _render(self, forms: dict) -> tuple[str, str | None]:
        def fill(t: str) -> str:  # a regex, not str.format: a bad value may hold braces itself
            return self._SLOT.sub(lambda m: forms[m[1]](m[2] or self.param), t)

        return fill(self._what), (fill(self._fix) if self._fix else None)

    def params(self) -> list[str]:
        """Every parameter the message names, ``param`` first."""
        named = [m[2] or self.param for t in (self._what, self._fix or "") for m in self._SLOT.finditer(t)]
        return list(dict.fromkeys([self.param, *named]))

    def as_option(self, option) -> UserError:
        """The same error naming command-line options instead: ``option`` is the option of ``param``
        (``"--min-coverage"``) or a function from any parameter name to its option."""
        if not callable(option):
            given = option
            option = lambda p: given if p == self.param else "--" + p.replace("_", "-")  # noqa: E731
        what, fix = self._render({"name": option, "set": lambda p: f"{option(p)} ", "flag": option})
        return UserError(what, fix=fix)
