"""The one error the deploy scripts raise: its message is the single line the CLI prints before exiting 1."""


class DeployError(RuntimeError):
    """A step failed; the message says which, why, and what to check."""
