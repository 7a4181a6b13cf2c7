"""The one error type that means "the user asked for something that cannot be done": a wrong key
or value, a missing testbed or campaign, a refused server. The CLI prints its message in one line
and exits 2; any other exception is a bug and shows its traceback."""


class UserError(Exception):
    """A mistake the user can fix from the message alone."""


class ConfigError(UserError, ValueError):
    """A config key or value that cannot be used; the message names the key and what is allowed."""
