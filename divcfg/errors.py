"""User-facing errors: one line that names the problem and the fix, never a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad path, bad value, missing stage).

    The CLI prints ``error: <message>`` and exits with status 2. The message should name
    both the problem and the fix, e.g. ``checkpoint 'x' not found: run `divcfg pretrain` first``.
    """
