"""The one Markdown table writer: ``DataFrame.to_markdown`` (tabulate's GitHub format).

Why a helper at all: the cells arrive already formatted by the caller (the report rounds by
column, the benchmark tables by magnitude), so number parsing is turned off, and a ``|`` or a line
break inside a cell would break the table, so they are escaped here, once.
"""
from __future__ import annotations

from typing import Callable

import pandas as pd


def markdown_table(df: pd.DataFrame, fmt: Callable[[object], str] = str) -> str:
    """``df`` as a GitHub-flavoured Markdown table, each cell written with ``fmt``."""
    cell = lambda v: fmt(v).replace("|", "\\|").replace("\n", " ")
    text = pd.DataFrame({cell(c): [cell(v) for v in df[c].tolist()] for c in df.columns})
    return text.to_markdown(index=False, tablefmt="github", disable_numparse=True)
