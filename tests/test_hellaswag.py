"""minigpt.hellaswag: the harness's text clean-up, its context/continuation split, batched scoring
against a brute-force scorer written here, and the download path against a loopback server."""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from minigpt import GPT, GPTConfig
from minigpt import hellaswag as hs
from minigpt.download import ChecksumError, DownloadError
from minigpt.tokenizer import ByteTokenizer, gpt2_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def example(label, activity, ctx_a, ctx_b, endings, ind):
    return {"ind": ind, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": f"{ctx_a} {ctx_b}".strip(), "split": "val", "split_type": "indomain",
            "label": label, "endings": endings, "source_id": f"made-up~{ind}"}


# Written for these tests in the official layout: ActivityNet-like captions, and WikiHow-like
# steps with the bracket markup the clean-up removes.
EXAMPLES = [
    example(2, "Tuning a violin", "A girl rests a violin under her chin.", "she",
            ["eats the violin slowly.", "throws the bow into a pond.",
             "turns a peg while plucking a string.", "becomes a violin herself."], 0),
    example(0, "Home and Garden",
            "[header] How to repot a fern [title] Pick a wider pot. [step] Choose one a few "
            "centimetres wider than the old one.", "",
            ["[title] Loosen the roots gently. [step] Tease them apart with your fingers.",
             "[title] Paint the fern blue.", "Sell the pot [substeps] at a market.",
             "[title] Freeze the soil overnight."], 1),
    example("1", "Making tea", "The kettle starts to whistle on the stove.", "the MAN then",
            ["drinks the kettle.", "pours the water over a tea bag in a mug.",
             "puts the stove in the fridge.", "reads the kettle aloud."], 2),
    example(3, "Cleaning", "[header] How to clean a sink [title] Rinse the basin [step]", "",
            ["Climb into the sink.", "Sing to the tap.", "Fill it with sand.",
             "[title] Scrub with a soft brush. [step] Rinse again with warm water."], 3),
    example(1, "Rope skipping", "Two children hold a long rope at either end.", "a third child",
            ["flies away.", "jumps in and skips as the rope turns.", "eats the rope.",
             "the rope skips alone."], 4),
]


# ------------------------------------------------------------------------ text


@pytest.mark.parametrize("text, expected", [
    ("  Hello world \n", "Hello world"),  # stripped
    ("Make tea [title] Boil water.", "Make tea. Boil water."),  # ". " then one space of two
    ("a [b] c [d] e", "a c e"),  # each group alone: greedy matching would leave "a e"
    ("x [title] y [step] z", "x. y z"),
    ("three   spaces", "three  spaces"),  # one pass: "  " -> " " leaves the third space
    ("[header] How to x", " How to x"),  # stripping comes before the groups go
    ("no markup here.", "no markup here."),
])
def test_preprocess_follows_the_harness_rule(text, expected):
    assert hs.preprocess(text) == expected


def test_render_builds_query_and_choices():
    query, choices, label = hs.render(EXAMPLES[0])
    assert query == "Tuning a violin: A girl rests a violin under her chin. She"
    assert choices[2] == "turns a peg while plucking a string."
    assert label == 2

    query, choices, label = hs.render(EXAMPLES[1])
    assert query == ("Home and Garden: How to repot a fern. Pick a wider pot. Choose one a few "
                     "centimetres wider than the old one.")
    # "[title]" at the very start has no space before it, so it is removed like any group
    assert choices[0] == " Loosen the roots gently. Tease them apart with your fingers."
    assert choices[2] == "Sell the pot at a market."
    assert label == 0

    query, _, label = hs.render(EXAMPLES[2])
    assert query.endswith("on the stove. The man then")  # capitalize() lowers the rest
    assert label == 1  # labels given as strings (as on the Hugging Face hub) are read too

    query, _, _ = hs.render(EXAMPLES[3])
    assert query == "Cleaning: How to clean a sink. Rinse the basin "  # a space is left at the end


class MergingBytes(ByteTokenizer):
    """Bytes, except that ". " becomes one id (256): BPE-like merging across the boundary."""

    vocab_size = 257

    def encode(self, text):
        ids, i, data = [], 0, text.encode()
        while i < len(data):
            if data[i:i + 2] == b". ":
                ids.append(256)
                i += 2
            else:
                ids.append(data[i])
                i += 1
        return ids


def test_encode_pair_takes_the_tail_of_the_whole_encoding():
    # whole "ab. cd" -> a b [". "] c d (5 ids); context "ab." -> a b . (3 ids);
    # the continuation is what follows the first 3 ids of the whole: c d
    context, continuation = hs.encode_pair(MergingBytes(), "ab.", " cd")
    assert context == [97, 98, 46]
    assert continuation == [99, 100]


def test_encode_pair_moves_trailing_spaces_to_the_continuation():
    context, continuation = hs.encode_pair(ByteTokenizer(), "sink  ", " Fill")
    assert bytes(context) == b"sink"
    assert bytes(continuation) == b"   Fill"


def test_pick_divides_by_the_characters_of_the_ending():
    # -1.0 / 1 = -1.0 < -9.5 / 10 = -0.95: acc_norm picks 1. Dividing by the length of the
    # continuation " " + choice instead would give -0.5 > -0.86 and pick 0.
    assert hs.pick([-1.0, -9.5], ["a", "b" * 10]) == (0, 1)
    assert hs.pick([-2.0, -2.0, -5.0], ["x", "y", "z"]) == (0, 0)  # ties: the first


# ------------------------------------------------------------------------ scoring


def clean(text):
    """The harness's clean-up written again without regular expressions."""
    text = text.strip().replace(" [title]", ". ")
    while (start := text.find("[")) >= 0 and (end := text.find("]", start)) >= 0:
        text = text[:start] + text[end + 1:]
    return text.replace("  ", " ")


def brute_force(model, tokenizer, ex):
    """Four forwards, one per ending; log-probabilities summed one token at a time."""
    query = clean(ex["activity_label"] + ": " + ex["ctx_a"] + " " + ex["ctx_b"].capitalize())
    endings = [clean(e) for e in ex["endings"]]
    block = model.config.block_size
    lls = []
    for ending in endings:
        context, continuation = query, " " + ending
        while context.endswith(" "):
            context, continuation = context[:-1], " " + continuation
        context_ids = tokenizer.encode(context)
        continuation_ids = tokenizer.encode(context + continuation)[len(context_ids):]
        sequence = (context_ids + continuation_ids)[-(block + 1):]
        logits = model(torch.tensor([sequence[:-1]]))[0][0]
        logp = torch.log_softmax(logits, dim=-1)
        total = 0.0
        first = len(sequence) - len(continuation_ids)  # index of the first ending token
        for k, token in enumerate(continuation_ids):
            total += logp[first + k - 1, token].item()
        lls.append(total)
    best = max(range(4), key=lambda i: (lls[i], -i))
    best_norm = max(range(4), key=lambda i: (lls[i] / len(endings[i]), -i))
    return lls, best, best_norm


def tiny_model(vocab_size, block_size):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2,
                       n_embd=32)
    return GPT(config).eval()


@pytest.mark.parametrize("tokenizer_name, block_size, batch_size", [
    ("byte", 64, 3),  # contexts longer than 64 bytes are cut on the left
    ("byte", 512, 8),
    ("gpt2", 24, 5),
    ("gpt2", 256, 1),
])
def test_matches_brute_force_scorer(tokenizer_name, block_size, batch_size):
    tokenizer = ByteTokenizer() if tokenizer_name == "byte" else gpt2_tokenizer()
    model = tiny_model(tokenizer.vocab_size, block_size)
    result = hs.evaluate(model, tokenizer, EXAMPLES, batch_size=batch_size, device="cpu",
                         progress=False)
    with torch.no_grad():
        expected = [brute_force(model, tokenizer, ex) for ex in EXAMPLES]
    for got, (lls, _, _) in zip(result["loglikelihoods"], expected, strict=True):
        assert got == pytest.approx(lls, abs=1e-5, rel=0)
    assert result["predictions"] == [best for _, best, _ in expected]
    assert result["predictions_norm"] == [norm for _, _, norm in expected]
    labels = [int(ex["label"]) for ex in EXAMPLES]
    assert result["labels"] == labels
    assert result["n"] == len(EXAMPLES)
    hits = [b == y for (_, b, _), y in zip(expected, labels, strict=True)]
    hits_norm = [b == y for (_, _, b), y in zip(expected, labels, strict=True)]
    assert result["acc"] == sum(hits) / len(EXAMPLES)
    assert result["acc_norm"] == sum(hits_norm) / len(EXAMPLES)
    p = result["acc"]
    assert result["acc_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (len(EXAMPLES) - 1)))
    json.dumps(result, allow_nan=False)  # serialisable as strict JSON


def test_truncation_is_exercised_and_scores_stay_finite():
    tokenizer = ByteTokenizer()
    longest = max(len(tokenizer.encode(hs.render(ex)[0])) for ex in EXAMPLES)
    assert longest > 64  # so the block_size=64 case above cuts contexts
    model = tiny_model(256, 64)
    lls = hs.evaluate(model, tokenizer, EXAMPLES, progress=False)["loglikelihoods"]
    assert all(math.isfinite(x) and x < 0 for row in lls for x in row)


def test_model_mode_is_restored():
    model = tiny_model(256, 128).train()
    hs.evaluate(model, ByteTokenizer(), EXAMPLES[:2], progress=False)
    assert model.training
    model.eval()
    hs.evaluate(model, ByteTokenizer(), EXAMPLES[:2], progress=False)
    assert not model.training


def test_an_ending_longer_than_the_context_window_is_refused():
    model = tiny_model(256, 16)
    long_ending = dict(EXAMPLES[0], endings=["x" * 40] * 4)
    with pytest.raises(ValueError, match="block_size=16"):
        hs.evaluate(model, ByteTokenizer(), [long_ending], progress=False)


# ------------------------------------------------------------------------ data


def write_jsonl(path, examples):
    path.write_text("".join(json.dumps(ex) + "\n" for ex in examples), encoding="utf-8")
    return path


def test_load_local_file_with_limit(tmp_path):
    path = write_jsonl(tmp_path / "val.jsonl", EXAMPLES)
    assert hs.load_examples(path) == EXAMPLES
    assert hs.load_examples(path, limit=2) == EXAMPLES[:2]
    with pytest.raises(ValueError, match="limit=0"):
        hs.load_examples(path, limit=0)


@pytest.mark.parametrize("change, message", [
    (lambda ex: ex.pop("label"), "test split has no labels"),
    (lambda ex: ex.update(endings=["a", "b", "c"]), "list of 4 strings"),
    (lambda ex: ex.update(label=7), "'label' must be 0, 1, 2 or 3"),
])
def test_bad_examples_are_named(tmp_path, change, message):
    broken = [dict(ex) for ex in EXAMPLES]
    change(broken[3])
    path = write_jsonl(tmp_path / "val.jsonl", broken)
    with pytest.raises(ValueError, match=message) as excinfo:
        hs.load_examples(path)
    assert f"{path}:4" in str(excinfo.value)


def test_missing_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no HellaSwag file"):
        hs.load_examples(tmp_path / "nope.jsonl")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.requests = {}, []
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def official(monkeypatch, tmp_path):
    """An empty cache, and our small file standing in for the official one."""
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hs, "VAL_EXAMPLES", len(EXAMPLES))
    body = "".join(json.dumps(ex) + "\n" for ex in EXAMPLES).encode()
    return tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl", body


def test_first_use_records_the_checksum_and_later_uses_check_it(server, official, monkeypatch):
    httpd, base = server
    cached, body = official
    httpd.files["/val.jsonl"] = body
    monkeypatch.setenv("MINIGPT_DATA_URL_HELLASWAG", f"{base}/val.jsonl")

    assert hs.load_examples(progress=False) == EXAMPLES
    record = cached.with_name("hellaswag_val.jsonl.sha256")
    assert record.read_text().split()[0] == hashlib.sha256(body).hexdigest()
    assert hs.load_examples(limit=1, progress=False) == EXAMPLES[:1]
    assert httpd.requests == ["/val.jsonl"]  # the second use read the cache

    cached.write_bytes(body.replace(b"violin", b"viola"))  # changed afterwards
    with pytest.raises(ChecksumError, match="differs from the copy first used"):
        hs.load_examples(progress=False)

    # Deleted and downloaded again, but the server now has other bytes: rejected too.
    cached.unlink()
    httpd.files["/val.jsonl"] = body.replace(b"kettle", b"teapot")
    with pytest.raises(ChecksumError, match=re.escape(str(record))):
        hs.load_examples(progress=False)
    assert not cached.exists()


def test_wrong_number_of_examples_is_rejected(server, official, monkeypatch):
    httpd, base = server
    cached, body = official
    monkeypatch.setattr(hs, "VAL_EXAMPLES", 10_042)
    httpd.files["/val.jsonl"] = body
    monkeypatch.setenv("MINIGPT_DATA_URL_HELLASWAG", f"{base}/val.jsonl")
    with pytest.raises(ValueError, match="has 5 examples, but the official validation set has "
                                         "10,042"):
        hs.load_examples(progress=False)
    assert not cached.with_name("hellaswag_val.jsonl.sha256").exists()  # nothing recorded


def test_offline_without_a_cached_copy(official):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/val.jsonl"
    with pytest.raises(DownloadError) as excinfo:
        hs.load_examples(url=url, progress=False)
    message = str(excinfo.value)
    assert "\n" not in message
    assert url in message and "offline" in message and "data=PATH" in message
    assert str(official[0]) in message
