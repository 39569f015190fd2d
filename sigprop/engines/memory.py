"""Memory planning: a run whose arrays would not fit is refused before it starts.

Both engines estimate the bytes a run holds at its peak from the shapes alone (theory: recorded
layers x grid points x B^2; Monte Carlo: seeds x width x B per chunk, plus the recorded
statistics) and call :func:`check`, which raises a :class:`ConfigError` stating the estimate,
the limit and how to shrink the run when the estimate exceeds ``SIGPROP_MEMORY_FRACTION``
(default 0.8) of the memory available now (:func:`available`: the machine's, a cgroup's, an
address-space limit's).

May import: ``sigprop.errors``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from sigprop.errors import ConfigError

FRACTION_ENV = "SIGPROP_MEMORY_FRACTION"
DEFAULT_FRACTION = 0.8  # of the memory available when the run starts
GIB = 2**30
CGROUP_ROOT = Path("/sys/fs/cgroup")  # cgroup v2: a container's or a batch job's memory limit


def available() -> int | None:
    """Bytes of memory available now: the least of the machine's (MemAvailable of /proc/meminfo
    on Linux, else the free physical pages), the process's cgroup limit less its use (a
    container or a batch job, whose machine reports the host's memory) and its address-space
    limit (``ulimit -v``) less its size; None where none can be read (then nothing is
    refused)."""
    found = [n for n in (_machine(), _cgroup_headroom(), _address_space_headroom())
             if n is not None]
    return min(found) if found else None


def _machine() -> int | None:
    kib = _field("/proc/meminfo", "MemAvailable:")
    if kib is not None:
        return kib * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _field(path: str, name: str, default: int | None = None) -> int | None:
    """The first number after ``name`` on its line of a /proc or /sys file, or ``default``
    (read with ``os.read``: half the cost of a text file's, ~12 us of a run's fixed cost)."""
    key = name.encode()
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(fd)
        for line in b"".join(chunks).splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return default


def _cgroup_headroom() -> int | None:
    """The least headroom of the process's cgroup (v2) and its parents that have a memory limit
    (a batch system may set it on the job, the process sitting in a task below): memory.max
    less memory.current, whose reclaimable page cache (inactive_file of memory.stat) is not
    counted as used, as container runtimes count it; None where none has a limit."""
    found = []
    for group in _limited(CGROUP_ROOT, _own_cgroup()):
        try:
            limit = (group / "memory.max").read_text().strip()
            used = int((group / "memory.current").read_text()) - _field(
                str(group / "memory.stat"), "inactive_file ", 0)
        except (OSError, ValueError):
            continue
        if limit != "max":
            found.append(max(0, int(limit) - used))
    return min(found) if found else None


@functools.lru_cache(maxsize=1)
def _own_cgroup() -> str | None:
    """The process's cgroup v2 path (the ``0::`` line of /proc/self/cgroup), read once."""
    try:
        return next(line.split("::", 1)[1].strip() for line in
                    Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
    except (OSError, StopIteration):
        return None


@functools.lru_cache(maxsize=4)
def _limited(root: Path, own: str | None) -> tuple[Path, ...]:
    """The folders of cgroup ``own`` and its parents under ``root`` that have a memory.max file
    (found once per process: a run's fixed cost)."""
    if own is None:
        return ()
    group = root / own.lstrip("/")
    chain = [group, *(p for p in group.parents if p == root or root in p.parents)]
    return tuple(g for g in chain if (g / "memory.max").is_file())


def _address_space_headroom() -> int | None:
    """The soft RLIMIT_AS less the process's virtual size (VmSize), or None where unlimited."""
    try:
        import resource
    except ImportError:  # (not on Windows)
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    size = _field("/proc/self/status", "VmSize:")
    return None if size is None else max(0, soft - size * 1024)


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
