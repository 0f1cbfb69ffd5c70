"""`movierec serve`, `movierec recommend`, `movierec rate` (wired into pipeline/cli.py)."""


def add_commands(sub) -> None:
    """Adds the serving subcommands to the `movierec` argument parser."""
