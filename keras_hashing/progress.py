"""Progress bars on stderr (tqdm) for the long loops: encoding and index builds."""

from __future__ import annotations

import sys


def progress_bar(total, desc, verbose, initial=0):
    """A tqdm bar on stderr counting images (rate and ETA), silent when not verbose."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", unit_scale=total >= 10000,
                file=sys.stderr, disable=not verbose, mininterval=1.0, dynamic_ncols=True)
