"""Checkpoints that survive a crash: atomic writes and loads that fail with a clear message.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then
renamed over the old one. A rename within one file system is atomic, so a process killed at any
moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the run it should resume."""


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporary files that a killed writer of `path` left behind. Each carries its
    writer's process id; one whose process is gone can never be finished, only take up disk
    (a GPT-2 checkpoint is over a gigabyte). A live writer's file is left alone."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 checks that the process exists without touching it
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or we cannot tell: keep the file
    return True


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable: the new name lives in the directory entry.
    Not possible on every platform; there it quietly does nothing."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# The files of a saved model (GPT.save_pretrained, a finetune's output, a Hugging Face folder).
SAVED_MODEL_FILES = ("model.safetensors", "config.json", "pytorch_model.bin")


def refuse_saved_model(folder, what: str) -> None:
    """Raise CheckpointError if `folder` holds a saved model: `what` (a training run, a
    finetune) would overwrite its weights or tokenizer, which may be all that is left of it."""
    folder = Path(folder)
    present = [name for name in SAVED_MODEL_FILES if (folder / name).is_file()]
    if present:
        raise CheckpointError(
            f"{folder} holds a saved model ({', '.join(present)}); {what} there would overwrite "
            "it. Choose another out_dir"
        )


def save_checkpoint(state: dict, path) -> None:
    """torch.save `state` atomically."""
    import torch  # here, not at the top: the tokenizing workers of prepare never need it

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path, map_location="cpu", require=("model",)) -> dict:
    """Load a checkpoint written by `save_checkpoint`, with a clear error if it is damaged, is
    not a minigpt checkpoint, or lacks one of the `require`d entries."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first, or check out_dir")
    state = load_weights_file(path, map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a minigpt training checkpoint (no 'model' entry)")
    require_entries(state, path, require)
    return state


def require_entries(state: dict, path, require) -> None:
    """A clear error when a loaded checkpoint lacks one of the `require`d entries."""
    missing = [key for key in require if key not in state]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(map(repr, missing))}: it was not written by `minigpt "
            "train` (or is from an incompatible version); train again into a new out_dir"
        )


def load_weights_file(path, map_location="cpu"):
    """torch.load with weights_only=True: a checkpoint is data, never code to execute. A file
    that needs arbitrary unpickling is refused, with no advice to load it unsafely."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # PyTorch reports Python objects as an "Unsupported global"; garbage fails otherwise
        if "unsupported global" not in str(exc).lower():
            raise CheckpointError(
                f"checkpoint {path} is corrupt or truncated (it does not unpickle); delete it to "
                "start over, or restore it from a backup"
            ) from None
        raise CheckpointError(
            f"{path} holds Python objects besides tensors and plain values; minigpt only loads "
            "data (weights_only=True), never code. Re-save its weights as safetensors or as a "
            "plain state dict"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: "
            f"{_first_line(exc)}); delete it to start over, or restore it from a backup"
        ) from None


def load_safetensors(path) -> dict:
    """The tensors of a .safetensors file, or a CheckpointError that names the file when it is
    truncated or not a safetensors file at all."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError
        raise CheckpointError(
            f"{path} is truncated or not a safetensors file ({_first_line(exc)}); copy or "
            "save the model again"
        ) from None


def _first_line(exc: Exception) -> str:
    """The first line of an error's message, never one that suggests loading unsafely."""
    lines = str(exc).strip().splitlines()
    if not lines or "weights_only" in lines[0]:
        return type(exc).__name__
    return lines[0]
