"""Progress bars on stderr, shown only when stderr is a terminal (CI logs stay clean)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def bar(iterable=None, desc: str = "", enabled: bool = True, **kw):
    return tqdm(
        iterable,
        desc=desc,
        disable=not (enabled and sys.stderr.isatty()),
        leave=False,
        dynamic_ncols=True,
        **kw,
    )
