"""Memory planning: a run whose arrays would not fit is refused before it starts.

Both engines estimate the bytes a run holds at its peak from the shapes alone (theory: recorded
layers x grid points x B^2; Monte Carlo: seeds x width x B per chunk, plus the recorded
statistics) and call :func:`check`, which raises a :class:`ConfigError` stating the estimate,
the limit and how to shrink the run when the estimate exceeds ``SIGPROP_MEMORY_FRACTION``
(default 0.8) of the memory available now.

May import: ``sigprop.errors``.
"""

from __future__ import annotations

import os

from sigprop.errors import ConfigError

FRACTION_ENV = "SIGPROP_MEMORY_FRACTION"
DEFAULT_FRACTION = 0.8  # of the memory available when the run starts
GIB = 2**30


def available() -> int:
    """Bytes of memory available now: MemAvailable of /proc/meminfo (Linux), else the free
    physical pages; None where neither can be read (then nothing is refused)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def fraction() -> float:
    """The fraction of available memory a run may use (``SIGPROP_MEMORY_FRACTION``)."""
    text = os.environ.get(FRACTION_ENV)
    if text is None:
        return DEFAULT_FRACTION
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:  # nan, zero or negative
        raise ConfigError(FRACTION_ENV, text, "a number > 0 (a fraction of available memory; "
                          "above 1 allows swapping)")
    return value


def check(estimate: int, what: str, shrink: str) -> None:
    """Refuse a run estimated at ``estimate`` bytes (``what``: its shapes in words) when it
    exceeds the limit; ``shrink`` says how to make it smaller."""
    free = available()
    if free is None:
        return
    limit = fraction() * free
    if estimate > limit:
        raise ConfigError(
            "memory", f"~{estimate / GIB:.3g} GiB estimated for {what}",
            f"at most {limit / GIB:.3g} GiB ({fraction():g} of the {free / GIB:.3g} GiB "
            f"available; set {FRACTION_ENV} to change it): {shrink}")
