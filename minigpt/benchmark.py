"""Training throughput on this machine: tokens/s, FLOP/s and MFU of a configuration (notebook 13).

    minigpt bench --config gpt2-124m            # the GPU preset, as it would train
    minigpt bench --config tiny --steps 10      # anything else, with KEY=VALUE overrides

The measured step is the real one, `Trainer.train_step` (autocast, gradient accumulation,
clipping, the fused optimizer where there is one, `torch.compile` when the config asks for it),
run on synthetic tokens made on the device, so that neither disk nor tokenizer enters the
figure. Warm-up steps (compilation included) are timed apart. MFU is eq. 8.5: FLOPs per token
(`GPT.flops_per_token` at the real sequence length) × tokens/s over the datasheet peak of the
device (`minigpt.platform.PEAK_FLOPS`); a device without a known peak, a CPU for one, gets no
MFU rather than a guess.
"""

from __future__ import annotations

import time

import torch

from minigpt import platform
from minigpt.metrics import mfu


class SyntheticTokens:
    """Token batches made on the device, in the sampler interface the Trainer reads.

    pattern=False draws uniform noise (throughput only). pattern=True draws sequences that
    follow a fixed random successor table (token → next token) on the first 512 ids, which a
    model learns in a few steps: enough to tell whether two precisions train alike.
    """

    def __init__(self, vocab_size, block_size, batch_size, device, pattern=False, seed=0):
        self.shape = (batch_size, block_size + 1)
        self.vocab_size, self.device, self.pattern = vocab_size, device, pattern
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.step = 0
        self.pattern_vocab = min(vocab_size, 512)
        self.successor = torch.randperm(self.pattern_vocab, generator=self.generator,
                                        device=device)

    def next_batch(self, device=None):
        if self.pattern:
            first = torch.randint(0, self.pattern_vocab, (self.shape[0], 1), device=self.device,
                                  generator=self.generator)
            columns = [first]
            for _ in range(self.shape[1] - 1):
                columns.append(self.successor[columns[-1]])
            tokens = torch.cat(columns, dim=1)
        else:
            tokens = torch.randint(0, self.vocab_size, self.shape, device=self.device,
                                   generator=self.generator)
        self.step += 1
        if device is not None:  # the Trainer's device (under torchrun, this rank's GPU)
            tokens = tokens.to(device)
        return tokens[:, :-1], tokens[:, 1:]

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


def vocab_size_of(tokenizer: str) -> int:
    """The vocabulary a `TrainConfig.tokenizer` setting gives, without reading a corpus. A
    character vocabulary depends on the text; 256 stands in for it (its cost is tiny)."""
    from minigpt.tokenizer import load_tokenizer

    if tokenizer == "char":
        return 256
    size = tokenizer.removeprefix("bpe:")
    if size != tokenizer and size.isdigit():
        return int(size)
    try:  # "byte", "gpt2" or a tokenizer.json, exactly as training would load it
        return load_tokenizer(tokenizer).vocab_size
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"tokenizer={tokenizer!r}: {exc}") from None


def make_trainer(config, vocab_size: int | None = None, pattern: bool = False, seed: int = 0):
    """A Trainer for `config` (a TrainConfig) that reads synthetic tokens instead of a corpus."""
    from minigpt.model import GPT
    from minigpt.train import Trainer

    vocab = vocab_size or vocab_size_of(config.tokenizer)
    torch.manual_seed(seed)
    model = GPT(config.model_config(vocab))
    device = platform.resolve_device(config.device)
    data = SyntheticTokens(model.config.vocab_size, config.block_size, config.batch_size,
                           device, pattern, seed)
    return Trainer(config, model=model, train_data=data)


def timed_steps(trainer, steps: int) -> tuple[float, float]:
    """Seconds for `steps` training steps, waiting for the device; and the last loss."""
    platform.synchronize(trainer.device)
    start = time.perf_counter()
    loss = None
    for _ in range(steps):
        loss = trainer.train_step()
    loss = loss.item() if loss is not None else float("nan")  # waits for the last step
    return time.perf_counter() - start, loss


def measure_training(config, steps: int = 20, warmup: int = 3,
                     vocab_size: int | None = None) -> dict:
    """Time `steps` training steps of `config` after `warmup` untimed ones."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps}, warmup={warmup}: need steps >= 1 and warmup >= 0")
    start = time.perf_counter()
    trainer = make_trainer(config, vocab_size)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    timed_steps(trainer, warmup)  # compilation happens here when compile is on
    warmup_seconds = time.perf_counter() - start
    seconds, loss = timed_steps(trainer, steps)
    # accumulation as the Trainer derives it (total_batch_tokens may set it)
    tokens = steps * trainer.grad_accum_steps * config.batch_size * config.block_size
    tokens_per_s = tokens / seconds
    flops, peak = trainer.flops_per_token, trainer.peak_flops
    return {
        "device": str(trainer.device), "dtype": str(trainer.dtype).replace("torch.", ""),
        "compile": config.compile, "compile_active": trainer.train_model is not trainer.model,
        "params": trainer.model.num_params(), "batch_size": config.batch_size,
        "grad_accum_steps": trainer.grad_accum_steps, "seq_len": config.block_size,
        "steps": steps, "seconds": seconds, "warmup_seconds": warmup_seconds,
        "tokens_per_s": tokens_per_s, "flops_per_token": flops,
        "achieved_tflops": flops * tokens_per_s / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu": mfu(flops, tokens_per_s, peak), "final_loss": loss,
        "max_memory_gb": (torch.cuda.max_memory_allocated(trainer.device) / 1e9
                          if trainer.device.type == "cuda" else None),
    }


def format_report(result: dict) -> str:
    utilisation = (f"MFU {100 * result['mfu']:.1f}% of {result['peak_tflops']:.0f} TFLOP/s"
           if result["mfu"] is not None else "MFU: no known peak for this device")
    memory = (f", peak memory {result['max_memory_gb']:.1f} GB"
              if result["max_memory_gb"] is not None else "")
    return (
        f"{result['params'] / 1e6:.1f}M parameters on {result['device']} ({result['dtype']}, "
        f"compile {'on' if result['compile_active'] else 'off'}), batch {result['batch_size']} x "
        f"{result['grad_accum_steps']} micro-batches x {result['seq_len']} tokens\n"
        f"{result['steps']} steps in {result['seconds']:.2f} s after "
        f"{result['warmup_seconds']:.1f} s of warm-up: {result['tokens_per_s']:,.0f} tokens/s, "
        f"{result['achieved_tflops']:.3g} TFLOP/s, {utilisation}{memory}"
    )

