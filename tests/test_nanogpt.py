"""minigpt.nanogpt: a nanoGPT-layout model written here, saved as nanoGPT's train.py saves it,
loads into minigpt with the same logits; files that are not nanoGPT checkpoints are refused."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minigpt import GPT
from minigpt.checkpoint import CheckpointError
from minigpt.nanogpt import load_nanogpt, suggest_tokenizer

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # importing torch.compile's machinery warns about torch internals, not about minigpt
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]


# ------------------------------------------------------------------------ a nanoGPT-layout model
# Module names as in karpathy/nanoGPT's model.py; the math written out here: LayerNorm with an
# optional bias (eps 1e-5), attention with an explicit causal mask and softmax, exact GELU.


class BiasOptionalLayerNorm(nn.Module):
    def __init__(self, width, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        y = (x - mean) / torch.sqrt(var + 1e-5)
        y = y * self.weight
        return y + self.bias if self.bias is not None else y


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size, bias, mask_buffer):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        if mask_buffer:  # what nanoGPT saves when flash attention is missing
            mask = torch.tril(torch.ones(block_size, block_size))
            self.register_buffer("bias", mask.view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        heads = [t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)]
        q, k, v = heads  # (B, nh, T, hs)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))  # (B, nh, T, T)
        future = torch.ones(T, T, dtype=torch.bool).triu(1)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        y = (weights @ v).transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd, bias):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()  # exact
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, args, mask_buffer):
        super().__init__()
        C, bias = args["n_embd"], args["bias"]
        self.ln_1 = BiasOptionalLayerNorm(C, bias)
        self.attn = CausalSelfAttention(C, args["n_head"], args["block_size"], bias, mask_buffer)
        self.ln_2 = BiasOptionalLayerNorm(C, bias)
        self.mlp = MLP(C, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPTLayout(nn.Module):
    def __init__(self, args, mask_buffer=False):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(args["vocab_size"], args["n_embd"]),
            wpe=nn.Embedding(args["block_size"], args["n_embd"]),
            drop=nn.Dropout(args["dropout"]),
            h=nn.ModuleList(Block(args, mask_buffer) for _ in range(args["n_layer"])),
            ln_f=BiasOptionalLayerNorm(args["n_embd"], args["bias"]),
        ))
        self.lm_head = nn.Linear(args["n_embd"], args["vocab_size"], bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied
        for p in self.parameters():  # random everywhere, so a misplaced tensor shows
            nn.init.normal_(p, mean=0.0, std=0.2)

    def forward(self, idx):
        positions = torch.arange(idx.size(1))
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, V)


def model_args(bias=True, **changes):
    return dict(n_layer=2, n_head=4, n_embd=32, block_size=24, bias=bias, vocab_size=96,
                dropout=0.1, **changes)


def train_config():
    """The 'config' entry: nanoGPT's plain-valued settings (values like its defaults)."""
    return dict(out_dir="out", eval_interval=250, log_interval=10, eval_iters=200,
                eval_only=False, always_save_checkpoint=False, init_from="scratch",
                wandb_log=False, dataset="made_up_char", gradient_accumulation_steps=1,
                batch_size=12, block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.1,
                bias=True, learning_rate=1e-3, max_iters=500, weight_decay=0.1, beta1=0.9,
                beta2=0.99, grad_clip=1.0, decay_lr=True, warmup_iters=10,
                lr_decay_iters=500, min_lr=1e-4, backend="nccl", device="cpu",
                dtype="float32", compile=False)


def save_like_nanogpt(model, args, path, compiled=False):
    """One AdamW step (two groups, as nanoGPT configures them), then its checkpoint dict."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.99))
    idx = torch.randint(0, args["vocab_size"], (2, args["block_size"]))
    F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    optimizer.step()
    # torch.compile wraps the model; the wrapper's state dict has "_orig_mod." before every name
    raw = torch.compile(model) if compiled else model
    checkpoint = {"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                  "model_args": args, "iter_num": 250, "best_val_loss": torch.tensor(1.4697),
                  "config": train_config()}
    torch.save(checkpoint, path)
    return path


# ------------------------------------------------------------------------ loading


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("compiled", [False, True])
def test_logits_match_the_nanogpt_layout_model(tmp_path, bias, compiled):
    torch.manual_seed(0)
    args = model_args(bias=bias)
    reference = NanoGPTLayout(args)
    path = save_like_nanogpt(reference, args, tmp_path / "ckpt.pt", compiled=compiled)
    if compiled:
        assert all(k.startswith("_orig_mod.") for k in torch.load(path)["model"])
    if not bias:
        assert not any(k.endswith(".bias") for k in reference.state_dict())

    model = GPT.from_pretrained(path).eval()
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (2, 4, 32, 24, 96)
    assert c.bias is bias and c.activation == "gelu" and c.tie_weights and c.dropout == 0.0
    idx = torch.randint(0, 96, (3, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], reference(idx), atol=1e-5, rtol=0)


def test_mask_buffers_of_the_slow_attention_path_are_skipped(tmp_path):
    torch.manual_seed(1)
    args = model_args()
    reference = NanoGPTLayout(args, mask_buffer=True)
    assert "transformer.h.0.attn.bias" in reference.state_dict()
    path = save_like_nanogpt(reference, args, tmp_path / "ckpt.pt")
    model = load_nanogpt(path).eval()
    idx = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], reference(idx), atol=1e-5, rtol=0)


def test_an_untied_head_is_kept(tmp_path):
    torch.manual_seed(2)
    args = model_args()
    reference = NanoGPTLayout(args)
    reference.lm_head.weight = nn.Parameter(torch.randn(96, 32) * 0.2)  # a modified nanoGPT
    path = save_like_nanogpt(reference, args, tmp_path / "ckpt.pt")
    model = load_nanogpt(path).eval()
    assert not model.config.tie_weights
    idx = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], reference(idx), atol=1e-5, rtol=0)


def test_overrides_apply(tmp_path):
    torch.manual_seed(3)
    args = model_args()
    path = save_like_nanogpt(NanoGPTLayout(args), args, tmp_path / "ckpt.pt")
    assert GPT.from_pretrained(path, dropout=0.2).config.dropout == 0.2
    with pytest.raises(CheckpointError, match="keep the weights' shapes"):
        load_nanogpt(path, block_size=48)


def test_tokenizer_suggestion():
    def checkpoint(vocab):
        return {"model": {"_orig_mod.transformer.wte.weight": torch.empty(vocab, 1)}}

    assert suggest_tokenizer(checkpoint(50304)) == "gpt2"
    assert suggest_tokenizer(checkpoint(50257)) == "gpt2"
    assert suggest_tokenizer(checkpoint(65)) is None


# ------------------------------------------------------------------------ refusals


def one_line_error(path, match):
    with pytest.raises(CheckpointError, match=match) as excinfo:
        GPT.from_pretrained(path)
    assert "\n" not in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_a_plain_state_dict_is_not_a_nanogpt_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(NanoGPTLayout(model_args()).state_dict(), path)
    one_line_error(path, "not a nanoGPT checkpoint: expected a dict with 'model'")


def test_a_minigpt_training_checkpoint_is_named(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "model_config": {"n_layer": 2}, "step": 3}, path)
    one_line_error(path, "minigpt training checkpoint.*load_run")


def test_a_pickled_module_is_refused_without_running_code(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(NanoGPTLayout(model_args()), path)  # the whole module: needs unpickling code
    one_line_error(path, r"holds a Python object \(.*NanoGPTLayout\)")


def test_a_file_that_is_no_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are notes, not tensors")
    one_line_error(path, "not a PyTorch checkpoint")


def test_inconsistent_or_modified_model_args(tmp_path):
    torch.manual_seed(4)
    args = model_args()
    model = NanoGPTLayout(args)
    path = save_like_nanogpt(model, dict(args, n_embd=64), tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="n_embd=64 but the weights have n_embd=32") as exc:
        load_nanogpt(path)
    assert str(exc.value).startswith(str(path))
    path = save_like_nanogpt(model, dict(args, use_rmsnorm=True), tmp_path / "fork.pt")
    with pytest.raises(CheckpointError, match="use_rmsnorm"):
        load_nanogpt(path)


# ------------------------------------------------------------------------ the command line


def test_sample_and_eval_take_a_nanogpt_checkpoint_with_gpt2s_vocabulary(tmp_path, capsys,
                                                                         cache):
    from minigpt.cli import main

    torch.manual_seed(0)
    args = {**model_args(), "vocab_size": 50304}  # GPT-2's 50257 ids, padded as nanoGPT does
    path = save_like_nanogpt(NanoGPTLayout(args), args, tmp_path / "ckpt.pt")
    assert main(["sample", f"out_dir={path}", "prompt=Hello", "max_new_tokens=5",
                 "device=cpu"]) == 0
    assert capsys.readouterr().out.startswith("Hello")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The model reads the text and predicts the next word. " * 80)
    assert main(["eval", f"out_dir={path}", f"dataset={corpus}", "max_batches=2",
                 "device=cpu"]) == 0
    assert "val loss" in capsys.readouterr().out
    # without a vocabulary minigpt can name, it asks instead of guessing
    small = save_like_nanogpt(NanoGPTLayout(model_args()), model_args(), tmp_path / "c.pt")
    assert main(["sample", f"out_dir={small}", "device=cpu"]) == 2
    assert "holds a model with 96 token ids and no tokenizer" in capsys.readouterr().err
