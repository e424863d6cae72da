"""The one exception for a user's mistake on the command line.

Why its own module: every subcommand raises it and ``cbcn.cli.main`` catches it, printing
``cbcn: error: <message>`` with exit status 2. Defined here, it is one class even under
``python -m cbcn.cli``, where the CLI module runs as ``__main__`` and a class defined in it would
exist twice.
"""
from __future__ import annotations


class CLIError(Exception):
    """A user error to print as ``cbcn: error: ...`` with exit status 2."""
