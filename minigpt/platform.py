"""Where the code runs: device, precision, compile, fused optimizers and peak FLOP/s, decided here.

Every platform difference (CPU / CUDA / MPS, bf16 support, Triton for `torch.compile`) is settled
in this one module, so the model and the trainer never branch on the hardware themselves. A
feature a platform lacks is switched off with a warning, never a crash.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Dense peak tensor-core FLOP/s from the vendors' datasheets (no structured sparsity), for
# 16-bit (bf16/fp16) and 32-bit (TF32 on tensor cores) matrix multiplies. Order matters: the
# first pattern found in the device name wins, so the more specific names come first.
PEAK_FLOPS = [
    ("H200", 989e12, 494e12),
    ("H100 PCIe", 756e12, 378e12),
    ("H100", 989e12, 494e12),  # SXM and NVL share the SXM figure here
    ("GH200", 989e12, 494e12),
    ("A100", 312e12, 156e12),
    ("L40S", 362e12, 183e12),
    ("L40", 181e12, 90.5e12),
    ("L4", 121e12, 60e12),
    ("A10G", None, None),  # a cloud variant without a public datasheet figure: no guess
    ("A10", 125e12, 62.5e12),
    ("RTX 4090", 165e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12),
    ("V100", 125e12, 15.7e12),  # no TF32: the 32-bit figure is plain FP32
    ("T4", 65e12, 8.1e12),
]


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple's MPS, then the CPU; an unavailable request falls back."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn("CUDA was requested but is not available; using the CPU", stacklevel=2)
        return torch.device("cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        warnings.warn("MPS was requested but is not available; using the CPU", stacklevel=2)
        return torch.device("cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype for autocast. "auto": bf16 where the GPU supports it, else float32."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r}: choose one of {['auto', *DTYPES]}")
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU has no bf16; using float16 with loss scaling", stacklevel=2)
        return torch.float16
    if dtype == torch.float16 and device.type == "cpu":
        warnings.warn("float16 autocast is slow and unscaled on the CPU; using bfloat16",
                      stacklevel=2)
        return torch.bfloat16
    return dtype


def configure_matmul(device: torch.device) -> None:
    """Let float32 matrix multiplies use TF32 tensor cores on GPUs that have them: about 10
    bits of mantissa instead of 23, which training does not notice, at several times the speed."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context: matmuls in `dtype`, reductions and the loss in float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def compile_available(device: torch.device) -> tuple[bool, str]:
    """Whether `torch.compile` can work here, and why not."""
    if not hasattr(torch, "compile"):
        return False, "this PyTorch has no torch.compile"
    if device.type == "mps":
        return False, "torch.compile does not support MPS well yet"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "Triton is not installed"
    return True, ""


def fused_adamw_available(device: torch.device) -> bool:
    return device.type == "cuda"


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Datasheet peak FLOP/s of this accelerator for `dtype`, or None when unknown.

    An unknown device (or the CPU, whose peak depends on cores, clocks and vector units) gets
    None, and no MFU is reported rather than a guess.
    """
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for pattern, flops_16, flops_32 in PEAK_FLOPS:
        if pattern in name:
            return flops_16 if dtype in (torch.bfloat16, torch.float16) else flops_32
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
