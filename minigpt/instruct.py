"""Instruction data for finetuning: JSONL layouts, the prompt template and the loss mask.
Derived in notebooks/10_finetuning.ipynb; `minigpt.finetune` trains on what this module makes.

Finetuning on instructions keeps the model and the loss of pretraining, but only the answer is to
be learned: the prompt is given, not predicted. With an example made of prompt tokens P and
response tokens R, the instruction loss is

    L = -1/|R| Σ_{t ∈ R} log p_θ(x_t | x_<t)                                           (eq. 10.1)

implemented by setting the targets of prompt positions to -100 (IGNORE_INDEX), which
`GPT.forward` leaves out of the cross-entropy.

Data is JSONL, one example per line, in one of three layouts (detected from the first line):

    Alpaca          {"instruction": ..., "input": ... (optional), "output": ...}
    chat            {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
                    (the loss covers the assistant turns only)
    classification  {"text": ..., "label": ...}

The prompt template (`format_prompt`) is plain text, so any tokenizer reads it:

    Instruction: {instruction}
    Input:                              <- these two lines only when "input" is not empty
    {input}
    Response:
    {output}<end>

<end> is the tokenizer's end-of-text token, or the byte 0x03 (ASCII "end of text") for
tokenizers without one, such as bytes. A chat is "System: …\\n", "User: …\\n", "Assistant: "
followed by the answer and <end>, turn after turn.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

IGNORE_INDEX = -100  # targets with this value are left out of the loss (eq. 10.1)
PAD_INPUT = -1  # input padding of classification batches: no tokenizer produces a negative id
END_OF_TEXT = "\x03"  # the response terminator for tokenizers without an end-of-text token
FORMATS = ("alpaca", "chat", "classification")
LINE = "_line"  # the key under which an example keeps its line number in the JSONL file
ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


class PromptTooLong(ValueError):
    """An example's prompt fills max_length tokens, leaving no room for its answer."""

    def __init__(self, prompt_tokens: int, max_length: int):
        self.prompt_tokens, self.max_length = prompt_tokens, max_length
        super().__init__(
            f"the prompt has {prompt_tokens} tokens but max_length={max_length} (the model's "
            "context or the max_length setting): no room for the answer; shorten the prompt or "
            "raise max_length"
        )


# ---------------------------------------------------------------------------------------------
# Reading JSONL


def read_jsonl(path) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-blank line; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no data file at {path}; write one JSON object per line (see `minigpt finetune "
            "--help`), or make an offline task from the stdlib: `python -m minigpt.tasks "
            "classify data/classify` writes data/classify/train.jsonl")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({exc.msg} at column "
                                 f"{exc.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {lineno}: expected a JSON object, got "
                                 f"{type(record).__name__}")
            record["_line"] = lineno
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no examples (the file is empty); write one JSON object "
                         "per line, e.g. {\"instruction\": ..., \"output\": ...}")
    return records


def detect_format(record: dict) -> str:
    if "messages" in record:
        return "chat"
    if "label" in record:
        return "classification"
    if "instruction" in record or "output" in record:
        return "alpaca"
    keys = sorted(k for k in record if k != "_line")
    raise ValueError(f"cannot tell the data layout from the keys {keys}; expected "
                     "instruction/output (Alpaca), messages (chat) or text/label")


def _require_text(record: dict, key: str, where: str, optional: bool = False) -> str:
    value = record.get(key, "" if optional else None)
    if not isinstance(value, str):
        missing = "is missing" if value is None else f"is a {type(value).__name__}"
        raise ValueError(f"{where}: {key!r} {missing}; it must be a string")
    return value


def load_examples(path, format: str = "auto") -> tuple[list[dict], str]:
    """Validated examples of a JSONL file and its layout ("alpaca", "chat", "classification")."""
    records = read_jsonl(path)
    if format == "auto":
        format = detect_format(records[0])
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: choose auto or one of {FORMATS}")
    examples = []
    for record in records:
        where = f"{path}, line {record['_line']}"
        if format == "alpaca":
            example = {"instruction": _require_text(record, "instruction", where),
                       "input": _require_text(record, "input", where, optional=True),
                       "output": _require_text(record, "output", where)}
        elif format == "classification":
            label = record.get("label")
            if not isinstance(label, (str, int)) or isinstance(label, bool):
                raise ValueError(f"{where}: 'label' must be a string or an integer")
            example = {"text": _require_text(record, "text", where), "label": str(label)}
        else:
            example = {"messages": _check_messages(record.get("messages"), where)}
        example[LINE] = record["_line"]  # so that later errors can point at the line
        examples.append(example)
    return examples, format


def _check_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"{where}: message {i} needs a role of {list(ROLES)}")
        _require_text(message, "content", f"{where}, message {i}")
        if message["role"] == "system" and i > 0:
            raise ValueError(f"{where}: only the first message may be a system message")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: no assistant message, so nothing to learn")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# ---------------------------------------------------------------------------------------------
# The template and the masked encoding (eq. 10.1)


def format_prompt(instruction: str, input: str = "") -> str:
    """The prompt of an Alpaca example: everything the model is given before its answer."""
    block = f"Input:\n{input}\n" if input else ""
    return f"Instruction: {instruction}\n{block}Response:\n"


def end_ids(tokenizer) -> list[int]:
    """The token(s) that end a response: end-of-text, else the byte 0x03."""
    if tokenizer.eot_token is not None:
        return [tokenizer.eot_token]
    return tokenizer.encode(END_OF_TEXT)


def segments(example: dict) -> list[tuple[str | None, bool]]:
    """(text, learned) pieces of an example in order; text None stands for <end>."""
    if "messages" in example:
        pieces = []
        for message in example["messages"]:
            role = ROLES[message["role"]]
            if message["role"] == "assistant":
                pieces += [(f"{role}: ", False), (message["content"], True), (None, True)]
            else:
                pieces.append((f"{role}: {message['content']}\n", False))
        return pieces
    prompt = format_prompt(example["instruction"], example.get("input", ""))
    return [(prompt, False), (example["output"], True), (None, True)]


def _tokens(example: dict, tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of a whole example and, for each, whether it is learned (a response token)."""
    ids, learned = [], []
    end = end_ids(tokenizer)
    for text, is_learned in segments(example):
        piece = end if text is None else tokenizer.encode(text)
        ids += piece
        learned += [is_learned] * len(piece)
    return ids, learned


def encode_example(example: dict, tokenizer, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, targets) of an instruction example, both of length ≤ max_length.

    targets[t] is the token after position t, or -100 where that token belongs to the prompt
    (eq. 10.1). A response that overruns max_length is cut; a prompt that leaves no room for
    one response token is an error.
    """
    ids, learned = _tokens(example, tokenizer)
    first = learned.index(True)
    if first >= max_length:
        raise PromptTooLong(first, max_length)
    ids, learned = ids[: max_length + 1], learned[: max_length + 1]
    targets = [token if keep else IGNORE_INDEX for token, keep in zip(ids[1:], learned[1:],
                                                                        strict=True)]
    return ids[:-1], targets


def prompt_ids(example: dict, tokenizer) -> list[int]:
    """The tokens the model is given to answer an example: everything before its last answer,
    tokenized exactly as in training."""
    ids, learned = _tokens(example, tokenizer)
    start = len(learned)
    while start > 0 and learned[start - 1]:  # back to the start of the last learned run
        start -= 1
    return ids[:start]


def encode_examples(examples, tokenizer, max_length: int, format: str, labels=None,
                    source: str = "data", skip_long: bool = False):
    """Encode every example: (ids, targets) pairs for instructions, (ids, label index) pairs
    for classification. Examples whose prompt leaves no room for an answer in `max_length`
    tokens are an error that names them all by line, or are left out with `skip_long`."""
    encoded, too_long = [], []
    for i, example in enumerate(examples):
        where = f"line {example[LINE]}" if LINE in example else f"example {i}"
        try:
            if format == "classification":
                ids = tokenizer.encode(example["text"])[:max_length]
                if not ids:
                    raise ValueError("the text is empty")
                encoded.append((ids, labels.index(example["label"])))
            else:
                encoded.append(encode_example(example, tokenizer, max_length))
        except PromptTooLong as exc:
            too_long.append((where, exc.prompt_tokens))
        except ValueError as exc:
            raise ValueError(f"{source}, {where}: {exc}") from None
    if too_long and not skip_long:
        raise ValueError(_too_long_message(too_long, len(examples), source, max_length))
    if too_long:
        print(f"left out {len(too_long)} of {len(examples)} examples of {source} whose prompts "
              f"do not fit max_length={max_length} tokens", file=sys.stderr)
    if not encoded:
        raise ValueError(f"{source}: no example fits max_length={max_length} tokens")
    return encoded


def _too_long_message(too_long, total: int, source: str, max_length: int) -> str:
    shown = ", ".join(where for where, _ in too_long[:5])
    more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
    longest = max(tokens for _, tokens in too_long)
    return (f"{len(too_long)} of {total} examples in {source} leave no room for an answer in "
            f"max_length={max_length} tokens ({shown}{more}; the longest prompt has {longest} "
            "tokens). Raise max_length up to the base model's context, pass skip_long=true to "
            "leave them out, or write shorter examples (python -m minigpt.tasks ... "
            "--max-chars N)")


# ---------------------------------------------------------------------------------------------
# Batches for the Trainer


class ExampleBatches:
    """Batches of encoded examples for `minigpt.train.Trainer`: `next_batch(device) -> (x, y)`.

    Each epoch visits every example once, in an order drawn from (seed, epoch) when shuffle is
    on, in file order otherwise; the last batch of an epoch may be smaller. Sequences are padded
    on the right to the longest in the batch: inputs with `pad_id`, per-token targets with -100
    (out of the loss). Classification examples carry one label each, so y has shape (B,).
    `state_dict()` is (epoch, position), enough to resume exactly.
    """

    def __init__(self, examples, batch_size: int, seed: int = 0, shuffle: bool = True,
                 pad_id: int = 0):
        if not examples:
            raise ValueError("no examples to make batches of")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be ≥ 1")
        self.examples, self.batch_size = list(examples), batch_size
        self.seed, self.shuffle, self.pad_id = seed, shuffle, pad_id
        self.epoch, self.position = 0, 0
        self._order = self._order_of(0)

    def __len__(self) -> int:
        """Batches per epoch."""
        return math.ceil(len(self.examples) / self.batch_size)

    def _order_of(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.examples))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def next_batch(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position >= len(self.examples):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._order_of(self.epoch)  # a new array: copies share nothing
        chosen = self._order[self.position: self.position + self.batch_size]
        self.position += len(chosen)
        return self.collate([self.examples[i] for i in chosen], device)

    def collate(self, batch, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids, _ in batch)
        x = torch.full((len(batch), width), self.pad_id, dtype=torch.long)  # (B, T)
        per_token = not isinstance(batch[0][1], int)
        y = (torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long) if per_token
             else torch.tensor([label for _, label in batch], dtype=torch.long))  # (B, T) | (B,)
        for row, (ids, target) in enumerate(batch):
            x[row, : len(ids)] = torch.tensor(ids)
            if per_token:
                y[row, : len(target)] = torch.tensor(target)
        if device is not None:
            x, y = x.to(device), y.to(device)
        return x, y

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "size": len(self.examples)}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != len(self.examples) or state["seed"] != self.seed:
            raise ValueError(f"batch state for {state['size']} examples with seed {state['seed']}"
                             f" does not fit {len(self.examples)} examples with seed {self.seed}")
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._order_of(self.epoch)
