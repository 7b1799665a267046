"""HellaSwag: the sentence-completion benchmark that GPT-2 reproductions report.

Each example is a context and four endings; the model picks the ending it finds most likely.
Scoring follows EleutherAI's lm-evaluation-harness (task ``hellaswag``, zero-shot), so figures
compare with published ones:

* text: ``query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`` and
  ``choices = [preprocess(e) for e in endings]``; `preprocess` strips the text, turns
  " [title]" into ". ", deletes every ``[...]`` group (WikiHow markup) and halves double spaces;
* tokens (`encode_pair`): the continuation of a choice is ``" " + choice``; trailing spaces of the
  context move to the continuation; ``context = encode(query)`` and the continuation is the tail
  of ``encode(query + " " + choice)`` after its first ``len(context)`` ids. The two encodings
  are made separately, so where BPE merges across the boundary the continuation is whatever the
  whole encoding has after that many ids, exactly as the harness does;
* the model reads ``(context + continuation)`` cut on the left to its last ``block_size + 1`` ids,
  minus the last id, and a choice's log-likelihood is the sum of log p over its continuation ids;
* ``acc``: the choice with the largest log-likelihood is the label. ``acc_norm``: the largest
  log-likelihood divided by ``len(choice)``, the number of *characters* of the preprocessed
  ending without the leading space, because the harness divides by the length of
  ``doc_to_choice(doc)`` (the endings), not of the continuation string ``" " + choice``.
  Karpathy's build-nanogpt ``hellaswag.py`` instead reads the raw ``ctx``, encodes ``" " +
  ending`` on its own and divides by the number of tokens; its docstring quotes, for GPT-2
  (124M), acc_norm 0.2955 from itself against 0.3114 from the harness, so compare like with like.

Data: the official validation file (10,042 examples) is downloaded once into
`minigpt.download.cache_dir` (resumable, atomic). Its sha256 cannot be known in advance here, so
the first use records it beside the cached file (``hellaswag_val.jsonl.sha256``) and every later
use checks it: a changed or damaged file is rejected. ``data=PATH`` reads a local jsonl instead.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minigpt.checkpoint import atomic_write_bytes
from minigpt.download import ChecksumError, DownloadError, cache_dir, download, sha256_file

__all__ = [
    "VAL_EXAMPLES",
    "VAL_URL",
    "encode_pair",
    "evaluate",
    "load_examples",
    "loglikelihoods",
    "official_val_file",
    "pick",
    "preprocess",
    "render",
]

VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VAL_EXAMPLES = 10_042  # lines of the official validation file
VAL_FILENAME = "hellaswag/hellaswag_val.jsonl"  # under cache_dir()
URL_ENV = "MINIGPT_DATA_URL_HELLASWAG"  # a mirror or a local server instead of VAL_URL
FIELDS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")


# ------------------------------------------------------------------------ text


def preprocess(text: str) -> str:
    """lm-evaluation-harness's clean-up of HellaSwag text (WikiHow markup)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)  # non-greedy: each [...] group on its own
    return text.replace("  ", " ")


def render(example: dict) -> tuple[str, list[str], int]:
    """(query, choices, label) of one example in the official format."""
    ctx = example["ctx_a"] + " " + example["ctx_b"].capitalize()
    query = preprocess(example["activity_label"] + ": " + ctx)
    return query, [preprocess(ending) for ending in example["endings"]], int(example["label"])


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the harness makes them; see the module docstring."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


# ------------------------------------------------------------------------ data


def _read_jsonl(path: Path) -> list[dict]:
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno} is not JSON ({err.msg}); expected one "
                                 "HellaSwag example per line (the official jsonl)") from err
            _check_example(example, f"{path}:{lineno}")
            examples.append(example)
    return examples


def _check_example(example, where: str) -> None:
    missing = [f for f in FIELDS if not isinstance(example, dict) or f not in example]
    if missing:
        hint = " (the test split has no labels; use the validation split)" if missing == [
            "label"] else ""
        raise ValueError(f"{where} is not a HellaSwag example: no {', '.join(missing)}; expected "
                         f"the official jsonl fields {', '.join(FIELDS)}{hint}")
    endings = example["endings"]
    if not (isinstance(endings, list) and len(endings) == 4
            and all(isinstance(e, str) for e in endings)):
        raise ValueError(f"{where}: 'endings' must be a list of 4 strings, got {endings!r:.80}")
    if str(example["label"]) not in ("0", "1", "2", "3"):
        raise ValueError(f"{where}: 'label' must be 0, 1, 2 or 3, got {example['label']!r}")


def official_val_file(url: str | None = None, progress: bool = True) -> tuple[Path, str | None]:
    """(path of the cached official validation file, its recorded sha256 or None on first use).

    Downloads the file when it is not cached (from `url`, ``$MINIGPT_DATA_URL_HELLASWAG`` or
    `VAL_URL`). A recorded checksum is verified here; `load_examples` records it on first use,
    once the file has passed the example count.
    """
    url = url or os.environ.get(URL_ENV) or VAL_URL
    dest = cache_dir() / VAL_FILENAME
    record = _record_path(dest)
    known = record.read_text().split()[0] if record.is_file() else None
    try:
        download(url, dest, sha256=known, progress=progress)
    except ChecksumError as err:
        raise ChecksumError(
            f"HellaSwag file {dest} (or its download from {url}) differs from the copy first used "
            f"on this machine, whose sha256 {known} is recorded in {record}: the file is damaged "
            f"or was changed. Delete {dest} to download it again (and {record} only if the "
            "official file really changed)"
        ) from err
    except DownloadError as err:
        raise DownloadError(
            f"HellaSwag's validation set is not cached at {dest} and {url} is unreachable (this "
            "machine may be offline): download hellaswag_val.jsonl on a machine with network and "
            f"pass data=PATH, or copy it to {dest}"
        ) from err
    return dest, known


def _record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def load_examples(data=None, limit: int | None = None, *, url: str | None = None,
                  progress: bool = True) -> list[dict]:
    """HellaSwag examples as dicts in the official format, the first `limit` of them if given.

    `data` is None for the official validation file (downloaded once, then cached; its count
    must be `VAL_EXAMPLES` and its checksum is recorded on first use and checked afterwards), or
    the path of a local jsonl file in the same format (any number of examples).
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit={limit!r}: use a positive number of examples, or None for all")
    if data is not None:
        path = Path(data).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no HellaSwag file at {path}; pass the path of a jsonl file "
                                    "such as hellaswag_val.jsonl, or data=None to download it")
        return _read_jsonl(path)[:limit]
    path, known = official_val_file(url=url, progress=progress)
    examples = _read_jsonl(path)
    if len(examples) != VAL_EXAMPLES:
        raise ValueError(f"{path} has {len(examples):,} examples, but the official validation "
                         f"set has {VAL_EXAMPLES:,}: delete it to download it again, or pass "
                         "data=PATH to evaluate a file of your own")
    if known is None:  # trust on first use: later uses must see the same bytes
        atomic_write_bytes(_record_path(path), f"{sha256_file(path)}  {path.name}\n".encode())
    return examples[:limit]


# ------------------------------------------------------------------------ scoring


def _model_inputs(context: list[int], continuation: list[int], block_size: int):
    """The input ids for one pair: (context + continuation) cut on the left to its last
    block_size + 1 ids, minus the last id, whose last len(continuation) positions predict the
    continuation (the harness's truncation)."""
    if not context:
        raise ValueError("a HellaSwag query encodes to no tokens; every query needs at least one")
    if not continuation:
        raise ValueError("an ending encodes to no tokens; every continuation needs at least one")
    if len(continuation) > block_size:
        raise ValueError(f"an ending of {len(continuation)} tokens does not fit block_size="
                         f"{block_size}; use a model with a longer context")
    return (context + continuation)[-(block_size + 1):-1]


@torch.no_grad()
def loglikelihoods(model, requests: Sequence[tuple[list[int], list[int]]], batch_size: int = 16,
                   device=None, progress: bool = True) -> list[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids) pair.

    Pairs are sorted by length, right-padded and run `batch_size` at a time, one forward per
    batch; causal attention keeps padding out of every scored position. The model is put in
    eval mode for the call and given back in the mode it came in.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be a positive integer")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    block_size = model.config.block_size
    pairs = [(_model_inputs(list(c), list(t), block_size), list(t)) for c, t in requests]
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]))
    results = [0.0] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="hellaswag", unit="batch", disable=not progress):
            chunk = order[start:start + batch_size]
            scores = _score_batch(model, [pairs[i] for i in chunk], device)
            for i, score in zip(chunk, scores, strict=True):
                results[i] = score
    finally:
        model.train(was_training)
    return results


def _score_batch(model, batch, device) -> list[float]:
    """Summed continuation log-likelihoods of (input ids, continuation ids) pairs, one forward."""
    width = max(len(ids) for ids, _ in batch)
    idx = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T), right-padded with id 0
    targets = torch.full((len(batch), width), -1, dtype=torch.long)  # (B, T), -1: not scored
    for row, (ids, continuation) in enumerate(batch):
        idx[row, :len(ids)] = torch.tensor(ids)
        # position t predicts token t + 1: the last len(continuation) inputs predict it
        targets[row, len(ids) - len(continuation):len(ids)] = torch.tensor(continuation)
    scored = targets >= 0  # (B, T)
    logits, _ = model(idx.to(device))  # (B, T, V)
    logp = F.log_softmax(logits[scored.to(device)].float(), dim=-1)  # (N, V): scored only
    wanted = targets[scored].to(device)[:, None]  # (N, 1)
    # Sum in float64 on the host (MPS has no float64): a long ending loses nothing in the sum.
    token_ll = logp.gather(1, wanted)[:, 0].cpu().double()  # (N,)
    rows = torch.arange(len(batch))[:, None].expand_as(targets)[scored]  # (N,) row of each
    return torch.zeros(len(batch), dtype=torch.float64).index_add_(0, rows, token_ll).tolist()


def pick(scores: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(acc prediction, acc_norm prediction): argmax of the log-likelihoods, and of the
    log-likelihoods divided by each choice's length in characters (first index wins ties)."""
    normed = [s / len(c) if c else -math.inf for s, c in zip(scores, choices, strict=True)]
    return _argmax(scores), _argmax(normed)


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _stderr(hits: list[int]) -> float | None:
    """Standard error of a mean of 0/1 outcomes (sample standard deviation / √n)."""
    n = len(hits)
    if n < 2:
        return None  # undefined for one example (and NaN is not valid JSON)
    p = sum(hits) / n
    return math.sqrt(p * (1 - p) / (n - 1))


def evaluate(model, tokenizer, examples: Sequence[dict], batch_size: int = 16, device=None,
             progress: bool = True) -> dict:
    """Zero-shot HellaSwag accuracy of `model` on `examples` (from `load_examples`).

    Returns a JSON-serialisable dict: ``acc``, ``acc_norm`` and their standard errors, ``n``,
    ``loglikelihoods`` (n × 4), ``predictions`` and ``predictions_norm`` (chosen endings),
    ``labels``.
    """
    if not examples:
        raise ValueError("no HellaSwag examples to evaluate; load them with load_examples()")
    rendered = [render(example) for example in examples]
    requests = [encode_pair(tokenizer, query, " " + choice)
                for query, choices, _ in rendered for choice in choices]
    flat = loglikelihoods(model, requests, batch_size=batch_size, device=device,
                          progress=progress)
    scores = [flat[4 * k:4 * k + 4] for k in range(len(rendered))]
    picks = [pick(s, choices) for s, (_, choices, _) in zip(scores, rendered, strict=True)]
    labels = [label for _, _, label in rendered]
    hits = [int(p == y) for (p, _), y in zip(picks, labels, strict=True)]
    hits_norm = [int(p == y) for (_, p), y in zip(picks, labels, strict=True)]
    return {
        "task": "hellaswag",
        "n": len(examples),
        "acc": sum(hits) / len(hits),
        "acc_stderr": _stderr(hits),
        "acc_norm": sum(hits_norm) / len(hits_norm),
        "acc_norm_stderr": _stderr(hits_norm),
        "loglikelihoods": scores,
        "predictions": [p for p, _ in picks],
        "predictions_norm": [p for _, p in picks],
        "labels": labels,
    }
