"""Provenance attributes: git is asked once per process, and never takes the index lock."""

import subprocess

from sigprop import provenance


def test_git_read_once_per_process_without_optional_locks(monkeypatch):
    calls = []
    run = subprocess.run

    def recording(argv, **kw):
        calls.append(list(argv))
        return run(argv, **kw)

    monkeypatch.setattr(provenance.subprocess, "run", recording)
    provenance.git_commit.cache_clear()
    try:
        first = provenance.make_attrs("theory", {}, "numpy")["git_commit"]
        second = provenance.make_attrs("theory", {}, "numpy")["git_commit"]
    finally:
        provenance.git_commit.cache_clear()
    assert first == second
    assert len(calls) == 2  # rev-parse and status, at the first dataset only
    # without --no-optional-locks, `git status` refreshes the index under .git/index.lock
    assert all(argv[:2] == ["git", "--no-optional-locks"] for argv in calls)
