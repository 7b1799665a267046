"""Run by torchrun in tests/test_distributed.py: rank 1's loss turns NaN at the 3rd step.

Usage: torchrun --nproc_per_node=2 ddp_nan_on_one_rank.py CORPUS OUT_DIR
"""

import sys

import torch

from minigpt.train import TrainConfig, Trainer, TrainingDiverged

corpus, out_dir = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
config = TrainConfig(
    out_dir=out_dir, dataset=corpus, tokenizer="byte", n_layer=1, n_head=2, n_embd=16,
    block_size=16, batch_size=2, max_iters=6, checkpoint_interval=2, eval_interval=100,
    eval_iters=2, log_interval=1, warmup_iters=1, device="cpu", dtype="float32",
    progress=False, sample_tokens=0,
)
trainer = Trainer(config)
real_forward = trainer.model.forward
calls = 0


def forward(idx, targets=None, kv_caches=None):
    global calls
    logits, loss = real_forward(idx, targets, kv_caches)
    if trainer.model.training:
        calls += 1
        if trainer.dist.rank == 1 and calls >= 3:
            loss = loss * float("nan")
    return logits, loss


trainer.model.forward = forward
try:
    trainer.fit()
except TrainingDiverged:
    print(f"diverged on rank {trainer.dist.rank} at step {trainer.step}", flush=True)
    sys.exit(1)
finally:
    torch.distributed.destroy_process_group()
print(f"finished on rank {trainer.dist.rank}", flush=True)
