"""Corpora, token files and batch samplers: the data side of next-token prediction.

Derived in notebooks/02_language_modeling.ipynb (windows of tokens, inputs ``x`` and targets
``y = x`` shifted by one) and used at scale in notebooks/08_pretraining.ipynb. Three layers, all
imported from here:

1. `load_corpus` gives a `Corpus`: a name and ``train``/``val`` documents (`minigpt.corpora`).
2. `prepare` tokenizes a corpus once into shards, ``train.000000.bin``, ... and
   ``val.000000.bin``, ..., with worker processes on every core, constant memory, and a resume
   after a kill (`minigpt.prepare`); `load_tokens` maps a split back as one read-only array
   (`minigpt.shards`).
3. `RandomWindowSampler` (training) and `SequentialSampler` (evaluation), defined here, cut
   (x, y) batches out of a token array. Both are resumable (`state_dict`) and split the global
   batch between data-parallel ranks, so N ranks see exactly the windows one process would see.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# Re-exported: `minigpt.data` is the one import for data.
from minigpt.corpora import (
    KNOWN_CORPORA,
    Corpus,
    corpus_from_settings,
    hf_corpus,
    in_validation,
    load_corpus,
    local_corpus,
    stdlib_corpus,
    stdlib_prose_corpus,
    stdlib_sources,
    tinyshakespeare_corpus,
)
from minigpt.prepare import prepare
from minigpt.shards import TokenShards, load_meta, load_tokens, token_dtype

# torch is imported inside the samplers only: a script that imports this module to call
# `prepare` starts worker processes, and on platforms that spawn them (macOS, Windows) each
# would otherwise pay for importing torch.
if TYPE_CHECKING:
    import torch

__all__ = [
    "KNOWN_CORPORA",
    "Corpus",
    "RandomWindowSampler",
    "SequentialSampler",
    "TokenShards",
    "corpus_from_settings",
    "hf_corpus",
    "in_validation",
    "load_corpus",
    "local_corpus",
    "load_meta",
    "load_tokens",
    "prepare",
    "stdlib_corpus",
    "stdlib_prose_corpus",
    "stdlib_sources",
    "tinyshakespeare_corpus",
    "token_dtype",
]


# ---------------------------------------------------------------------------------------------
# Samplers


def _as_tokens(tokens) -> np.ndarray:
    import torch

    if isinstance(tokens, torch.Tensor):
        return tokens.detach().cpu().numpy()
    if isinstance(tokens, np.ndarray | TokenShards):
        return tokens
    return np.asarray(tokens, dtype=np.int64)


def _check_ints(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")


class _WindowSampler:
    """Shared by both samplers: validation, the rank's slice, and cutting windows into (x, y)."""

    def __init__(self, tokens, block_size, batch_size, rank, world_size, split):
        self.tokens = _as_tokens(tokens)
        if self.tokens.ndim != 1:
            raise ValueError(f"tokens must be a flat array, not of shape {self.tokens.shape}")
        _check_ints(block_size=block_size, batch_size=batch_size, world_size=world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), not {rank}")
        if split is None:
            split = getattr(self.tokens, "split", None)
        if split is None:  # a shard "val.000000.bin" (or a "val.bin") is of the val split
            filename = getattr(self.tokens, "filename", None)
            split = Path(filename).name.split(".")[0] if filename else "token"
        n = len(self.tokens)
        if n == 0:
            raise ValueError(f"the {split} split is empty (0 tokens): prepare a non-empty corpus")
        if n < block_size + 1:
            raise ValueError(
                f"the {split} split has {n} tokens, but one window needs block_size + 1 = "
                f"{block_size + 1}; use a larger corpus or a smaller block_size (at most {n - 1})"
            )
        self.block_size, self.batch_size = block_size, batch_size
        self.rank, self.world_size, self.split = rank, world_size, split

    @property
    def global_batch_size(self) -> int:
        """Windows per step summed over all ranks."""
        return self.batch_size * self.world_size

    def _rank_slice(self, global_starts: np.ndarray) -> np.ndarray:
        return global_starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def _windows(self, starts: np.ndarray, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        offsets = np.arange(self.block_size + 1)
        windows = self.tokens[starts[:, None] + offsets].astype(np.int64)  # (B, T + 1)
        x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))  # (B, T) inputs
        y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))  # (B, T) next-token targets
        if device is not None:
            device = torch.device(device)
            if device.type == "cuda":  # pinned memory lets the copy overlap with compute
                return (
                    x.pin_memory().to(device, non_blocking=True),
                    y.pin_memory().to(device, non_blocking=True),
                )
            x, y = x.to(device), y.to(device)
        return x, y

    def _check_state(self, state: dict, kind: str) -> None:
        if state.get("sampler") != kind:
            raise ValueError(f"this state is from a {state.get('sampler')!r} sampler, not {kind!r}")
        if state["block_size"] != self.block_size or state["global_batch_size"] != (
            self.global_batch_size
        ):
            raise ValueError(
                f"cannot resume: the state has block_size={state['block_size']} and "
                f"global_batch_size={state['global_batch_size']}, this sampler "
                f"block_size={self.block_size} and global_batch_size={self.global_batch_size}"
            )


class RandomWindowSampler(_WindowSampler):
    """Random windows for training: ``x = tokens[s : s + T]``, ``y = tokens[s + 1 : s + T + 1]``.

    Step k draws the global batch (``batch_size * world_size`` starts) from a generator seeded
    with ``(seed, k)``, the same on every rank, and this rank keeps its ``batch_size`` slice. So
    two ranks with batch b see exactly the windows one process with batch 2b sees, and the whole
    state is the step counter: resuming from `state_dict` gives identical batches.
    """

    def __init__(
        self,
        tokens,
        block_size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        *,
        split: str | None = None,
    ):
        super().__init__(tokens, block_size, batch_size, rank, world_size, split)
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
        self.seed, self.step = int(seed), 0

    def global_starts(self, step: int) -> np.ndarray:
        """Start offsets of all ranks' windows at `step`, shape (batch_size * world_size,)."""
        generator = np.random.default_rng([self.seed, step])
        return generator.integers(0, len(self.tokens) - self.block_size, self.global_batch_size)

    def next_batch(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), int64 tensors of shape (batch_size, block_size), y = x shifted by one."""
        starts = self._rank_slice(self.global_starts(self.step))
        self.step += 1
        return self._windows(starts, device)

    def __iter__(self):
        """An endless stream of batches (training runs count steps, not epochs)."""
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {
            "sampler": "random",
            "seed": self.seed,
            "step": self.step,
            "block_size": self.block_size,
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        self._check_state(state, "random")
        self.seed, self.step = int(state["seed"]), int(state["step"])


class SequentialSampler(_WindowSampler):
    """Non-overlapping windows in order, for evaluation: window i starts at ``i * block_size``.

    An epoch visits each of the ``(len(tokens) - 1) // block_size`` windows once; step by step,
    the next ``batch_size * world_size`` windows form the global batch and each rank keeps its
    slice. The last batch of an epoch is smaller (some ranks' slices may even be empty) unless
    ``drop_last=True``. After the last batch the epoch counter moves on and it starts over.
    """

    def __init__(
        self,
        tokens,
        block_size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        split: str | None = None,
        drop_last: bool = False,
    ):
        super().__init__(tokens, block_size, batch_size, rank, world_size, split)
        self.num_windows = (len(self.tokens) - 1) // block_size
        self.drop_last = drop_last
        if drop_last and self.num_windows < self.global_batch_size:
            raise ValueError(
                f"the {self.split} split has {self.num_windows} windows of {block_size} tokens, "
                f"fewer than one global batch of {self.global_batch_size}; use drop_last=False "
                "or a smaller batch"
            )
        self.epoch, self.position = 0, 0  # position: index of the next window

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.num_windows, self.global_batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def next_batch(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) for the next windows; shapes (rows, block_size) with rows <= batch_size."""
        end = min(self.position + self.global_batch_size, self.num_windows)
        window_ids = self._rank_slice(np.arange(self.position, end))
        self.position = end
        if self.position >= len(self) * self.global_batch_size or end == self.num_windows:
            self.epoch, self.position = self.epoch + 1, 0
        return self._windows(window_ids * self.block_size, device)

    def __iter__(self):
        """The remaining batches of the current epoch."""
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {
            "sampler": "sequential",
            "epoch": self.epoch,
            "position": self.position,
            "block_size": self.block_size,
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        self._check_state(state, "sequential")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
