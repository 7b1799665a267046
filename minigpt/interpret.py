"""Looking inside a trained model. Used in notebooks/12_inside_the_black_box.ipynb (eqs. 12.1-12.4).

    attention maps   the weights softmax(QKᵀ/√d_k) of every head of every layer       (eq. 12.1)
    logit lens       LN_f(hˡ) Eᵀ: what the model would predict if it stopped at layer l (eq. 12.2)
    linear probe     a logistic regression on hidden states: is a property linearly
                     readable from layer l?                                          (eq. 12.3)
    log-likelihood   log p(completion | prompt) = Σ_t log p(y_t | prompt, y_<t), the
                     measure behind the bias probes                                  (eq. 12.4)

Each tool answers a narrow question; none of them explains the model. The notebook discusses
what they can and cannot show.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from minigpt.model import GPT


@contextlib.contextmanager
def _evaluating(model: GPT):
    """Eval mode (no dropout) for the duration, then the model's previous mode again."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def attention_maps(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Attention weights of every layer and head (eq. 12.1): (n_layer, B, n_head, T, T)."""
    layers = [block.attn for block in model.blocks]
    previous = [a.record_weights for a in layers]
    try:
        for attention in layers:
            attention.record_weights = True
        with _evaluating(model):
            model(idx)
        return torch.stack([a.attn_weights for a in layers])
    finally:
        for attention, flag in zip(layers, previous, strict=True):
            attention.record_weights = flag
            attention.attn_weights = None


@torch.no_grad()
def residual_stream(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The residual stream after the embedding and after each block: (n_layer + 1, B, T, C)."""
    states = []
    hooks = [model.drop.register_forward_hook(lambda m, i, out: states.append(out))]
    hooks += [b.register_forward_hook(lambda m, i, out: states.append(out)) for b in model.blocks]
    try:
        with _evaluating(model):
            model(idx)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(states)


@torch.no_grad()
def logit_lens(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Next-token logits read off every layer through the final norm and head (eq. 12.2):
    (n_layer + 1, B, T, V). The last entry equals the model's own logits for a pre-LN model."""
    return model.lm_head(model.ln_f(residual_stream(model, idx)))


def train_linear_probe(features: torch.Tensor, labels: torch.Tensor, test_fraction: float = 0.3,
                       steps: int = 300, lr: float = 0.1, weight_decay: float = 1e-3,
                       seed: int = 0) -> dict:
    """Fit a logistic-regression probe on (N, C) features to integer labels (eq. 12.3).

    Returns train and test accuracy and the majority-class accuracy of the test split: a probe
    is only informative where it beats that baseline on examples it has not seen.
    """
    if features.dim() != 2 or labels.dim() != 1 or len(features) != len(labels):
        raise ValueError("features must be (N, C) and labels (N,) with the same N")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    n_test = max(1, int(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    x = features.float()
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6  # standardise on the train split only
    x = (x - mean) / std
    n_classes = int(labels.max()) + 1
    probe = torch.nn.Linear(x.size(1), n_classes)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = F.cross_entropy(probe(x[train]), labels[train])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predictions = probe(x).argmax(-1)
    majority = torch.bincount(labels[train], minlength=n_classes).argmax()
    return {
        "train_accuracy": (predictions[train] == labels[train]).float().mean().item(),
        "test_accuracy": (predictions[test] == labels[test]).float().mean().item(),
        "majority_baseline": (labels[test] == majority).float().mean().item(),
    }


@torch.no_grad()
def completion_logprob(model: GPT, tokenizer, prompt: str, completion: str) -> float:
    """log p(completion | prompt) in nats, summed over the completion's tokens (eq. 12.4).

    Prompt and completion are tokenized separately (exact for bytes; with BPE the joined text
    might tokenize differently). If the two together exceed the context, the *prompt* is cropped
    from the left, as generation would; a completion longer than the context is an error.
    """
    prompt_ids, completion_ids = tokenizer.encode(prompt), tokenizer.encode(completion)
    if not prompt_ids or not completion_ids:
        raise ValueError("prompt and completion must both encode to at least one token")
    if len(completion_ids) > model.config.block_size:
        raise ValueError(f"the completion has {len(completion_ids)} tokens but the context holds "
                         f"{model.config.block_size}; score a shorter completion")
    ids = (prompt_ids + completion_ids)[-model.config.block_size - 1:]
    idx = torch.tensor([ids[:-1]], device=model.device)
    with _evaluating(model):
        logits, _ = model(idx)
    logprobs = torch.log_softmax(logits[0].float(), dim=-1)  # (T, V)
    targets = torch.tensor(ids[1:], device=model.device)
    n = len(completion_ids)
    return logprobs[-n:].gather(1, targets[-n:, None]).sum().item()


def bias_probe(model: GPT, tokenizer, template: str, fillers: dict[str, str],
               completions: list[str]) -> dict[str, dict[str, float]]:
    """log p(completion | template filled with each filler), for every filler and completion.

    template contains "{}", e.g. "{} worked as a"; fillers maps a label to what fills it (e.g.
    {"she": "She", "he": "He"}). Comparing rows shows how much the swap alone moves each
    completion's likelihood; it measures this model on these sentences, nothing broader.
    """
    if "{}" not in template:
        raise ValueError('template needs a "{}" where the filler goes')
    return {
        label: {c: completion_logprob(model, tokenizer, template.format(text), c)
                for c in completions}
        for label, text in fillers.items()
    }
