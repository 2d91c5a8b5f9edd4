"""One way to silence Hugging Face libraries while loading weights.

diffusers and transformers print a progress bar per file and notices about weights a partial
load skips on purpose (an aesthetic head loads CLIP's vision tower only); inside a training or
benchmark log they are noise. Bottom floor of the package graph: models, rewards and the tiny
world's training use it.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from typing import Iterator


def _silence(libraries: tuple[str, ...]) -> list:
    """Error-level logging and no progress bars for ``libraries``; returns (module, old level)."""
    libs = [importlib.import_module(name) for name in (libraries or ("diffusers", "transformers"))]
    levels = [(lib, lib.logging.get_verbosity()) for lib in libs]
    for lib in libs:
        lib.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    return levels


def quiet_from_now(*libraries: str) -> None:
    """For the rest of the process (a training script's log): as :func:`quiet`, never restored."""
    _silence(libraries)


@contextlib.contextmanager
def quiet(*libraries: str, ignore_warnings: bool = False) -> Iterator[None]:
    """For the duration: ``libraries`` (default diffusers and transformers) log at error level
    without progress bars; ``ignore_warnings`` also drops Python warnings. Restored afterwards."""
    levels = _silence(libraries)
    try:
        with warnings.catch_warnings():
            if ignore_warnings:
                warnings.simplefilter("ignore")
            yield
    finally:
        for lib, level in levels:
            lib.logging.set_verbosity(level)
            lib.utils.logging.enable_progress_bar()
