"""Shared fixtures: a token cache that never touches the home folder, and the `slow` marker."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    # The exercise checks draw one case at random on every call; here the draws are a fixed
    # sequence (see checks.core.fresh_seed), so that no test passes or fails by chance. The
    # notebooks' kernels inherit it.
    os.environ.setdefault("MINIGPT_CHECK_SEED", "2026")
    config.addinivalue_line(
        "markers", "slow: a test that takes minutes (it still runs by default; -m 'not slow' skips)"
    )


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """One MINIGPT_CACHE folder for the whole session, so corpora are tokenized once."""
    return tmp_path_factory.mktemp("minigpt-cache")


@pytest.fixture
def cache(monkeypatch, session_cache):
    """Point minigpt's cache (token files, downloads) at the session's temporary folder."""
    monkeypatch.setenv("MINIGPT_CACHE", str(session_cache))
    return session_cache


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    """A small local text corpus (about 20k characters of seeded pseudo-English)."""
    import random

    rng = random.Random(0)
    words = ("the model reads a token and predicts the next one while attention mixes "
             "positions through learned weights so that loss falls step by step").split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) + "."
             for _ in range(400)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def one_thread():
    """Run tiny models on one CPU thread: as fast as two for them, and far faster when the
    machine is shared (OpenMP threads that wait for a busy core spin and stall each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def minigpt_env(cache) -> dict:
    """The environment for a `minigpt` subprocess: the test cache, one thread per process."""
    import os

    return {**os.environ, "MINIGPT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
