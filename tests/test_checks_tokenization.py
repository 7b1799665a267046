"""The checks of exercises/01_tokenization.ipynb pass on right answers and name each wrong one."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest
from check_helpers import fails, rejects_remembered_answers

from checks import tokenization as check
from minigpt.tokenizer import BPETokenizer, compression_ratio, merge, pair_counts


def todo(*args):
    raise NotImplementedError


# ---- exercise 1: UTF-8 by hand ------------------------------------------------------------------


def utf8_bytes(text, boundaries=(0x7F, 0x7FF, 0xFFFF), marks=True, reverse=False):
    out = []
    for ch in text:
        code = ord(ch)
        if code <= boundaries[0]:
            encoded = [code]
        elif code <= boundaries[1]:
            encoded = [0xC0 | code >> 6, 0x80 | code & 0x3F]
        elif code <= boundaries[2]:
            encoded = [0xE0 | code >> 12, 0x80 | code >> 6 & 0x3F, 0x80 | code & 0x3F]
        else:
            encoded = [0xF0 | code >> 18, 0x80 | code >> 12 & 0x3F, 0x80 | code >> 6 & 0x3F,
                       0x80 | code & 0x3F]
        if not marks:
            encoded = [encoded[0]] + [b & 0x3F for b in encoded[1:]]
        out += encoded[::-1] if reverse else encoded
    return out


def test_utf8_passes_on_a_hand_written_encoder_and_on_the_codec(capsys):
    check.check_utf8_bytes(utf8_bytes)
    check.check_utf8_bytes(lambda text: list(text.encode("utf-8")))
    assert "✓ utf8_bytes" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda text: [ord(c) for c in text], ["code point", "ord"]),
    (lambda text: utf8_bytes(text, reverse=True), ["reverse order"]),
    (lambda text: list(text.encode("utf-16-le")), ["UTF-16"]),
    (lambda text: utf8_bytes(text, marks=False), ["continuation", "0b10xxxxxx"]),
    (lambda text: utf8_bytes(text, boundaries=(0x7E, 0x7FF, 0xFFFF)), ["boundaries", "U+007F"]),
    (lambda text: utf8_bytes(text, boundaries=(0x7F, 0x7FE, 0xFFFF)), ["boundaries", "<="]),
    (lambda text: text.encode("utf-8"), ["bytes object", "list"]),
    (todo, ["not written yet"]),
])
def test_utf8_names_the_mistake(wrong, words):
    fails(check.check_utf8_bytes, wrong, *words)


def test_utf8_without_lead_marker():
    def no_lead(text):
        out = utf8_bytes(text)
        encoded = list(text.encode("utf-8"))
        if len(encoded) > 1:
            out[0] &= {2: 0x1F, 3: 0x0F, 4: 0x07}[len(encoded)]
        return out

    fails(check.check_utf8_bytes, no_lead, "lead byte", "0b110xxxxx")


# ---- exercise 2: compression ratio --------------------------------------------------------------


def test_compression_ratio_passes_on_the_package(capsys):
    check.check_compression_ratio(compression_ratio)
    assert "✓ compression_ratio" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda tok, text: len(text) / len(tok.encode(text)), ["characters", "UTF-8 bytes"]),
    (lambda tok, text: len(tok.encode(text)) / len(text.encode()), ["upside down"]),
    (lambda tok, text: len(text.encode()) / len(set(tok.encode(text))), ["distinct tokens"]),
    (lambda tok, text: len(text.encode()) // len(tok.encode(text)), ["integer division"]),
    (lambda tok, text: 2.0, ["expected", "bytes /"]),
    (todo, ["not written yet"]),
])
def test_compression_ratio_names_the_mistake(wrong, words):
    fails(check.check_compression_ratio, wrong, *words)


# ---- exercise 3: pair counts --------------------------------------------------------------------


def test_pair_counts_passes_on_the_package_and_a_counter(capsys):
    check.check_pair_counts(pair_counts)
    check.check_pair_counts(lambda ids: Counter(pairwise(ids)))
    assert "✓ count_pairs" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda ids: Counter(zip(ids[::2], ids[1::2], strict=False)),
     ["overlap", "one position at a time"]),
    (lambda ids: Counter(pairwise(ids + ids[:1])), ["wraps around"]),
    (lambda ids: Counter(pairwise(ids[:-1])), ["last pair is missing", "off-by-one"]),
    (lambda ids: {p: 1 for p in pairwise(ids)}, ["every count is 1"]),
    (lambda ids: Counter((b, a) for a, b in pairwise(ids)), ["reversed"]),
    (lambda ids: Counter(f"{a},{b}" for a, b in pairwise(ids)), ["tuples"]),
    (lambda ids: list(pairwise(ids)), ["dict"]),
    (lambda ids: {**Counter(pairwise(ids)), (999, 999): 1}, ["does not occur"]),
    (todo, ["not written yet"]),
])
def test_pair_counts_names_the_mistake(wrong, words):
    fails(check.check_pair_counts, wrong, *words)


def test_pair_counts_must_not_edit_its_input():
    def destructive(ids):
        counts = Counter(pairwise(ids))
        ids.clear()
        return counts

    fails(check.check_pair_counts, destructive, "changed the list")


# ---- exercise 4: one merge step -----------------------------------------------------------------


def test_merge_passes_on_the_package(capsys):
    check.check_merge(merge)
    assert "✓ merge_pair" in capsys.readouterr().out


def merge_no_skip(ids, pair, new_id):
    return [new_id if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair else ids[i]
            for i in range(len(ids))]


def merge_drop_tail(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def merge_right_to_left(ids, pair, new_id):
    return merge(ids[::-1], pair[::-1], new_id)[::-1]


def merge_in_place(ids, pair, new_id):
    ids[:] = merge(ids, pair, new_id)
    return ids


@pytest.mark.parametrize("wrong, words", [
    (merge_no_skip, ["skip both ids"]),
    (merge_drop_tail, ["last id went missing"]),
    (merge_first_only, ["only the first occurrence"]),
    (merge_right_to_left, ["right to left", "[9, 5]"]),
    (merge_in_place, ["changed the list"]),
    (lambda ids, pair, new_id: list(ids), ["nothing was replaced", "tuple"]),
    (lambda ids, pair, new_id: merge(ids, pair, new_id) + [0], ["not right", "ids, expected"]),
    (todo, ["not written yet"]),
])
def test_merge_names_the_mistake(wrong, words):
    fails(check.check_merge, wrong, *words)


# ---- exercise 5: a tiny BPE trainer -------------------------------------------------------------


def train(text, n_merges, pick="smallest", first_id=256):
    ids, merges = list(text.encode("utf-8")), []
    for k in range(n_merges):
        counts = {}
        for pair in pairwise(ids):
            counts[pair] = counts.get(pair, 0) + 1
        if pick == "first":
            pair = max(counts, key=counts.get)
        elif pick == "most_common":
            pair = Counter(counts).most_common(1)[0][0]
        elif pick == "largest":
            pair = max(counts, key=lambda p: (counts[p], p))
        else:
            pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        ids = merge(ids, pair, first_id + k)
    return merges


def train_without_recount(text, n_merges):
    counts = pair_counts(list(text.encode("utf-8")))
    return sorted(counts, key=lambda p: (-counts[p], p))[:n_merges]


def test_train_passes_on_a_loop_and_on_the_package(capsys):
    check.check_train_bpe(train)
    check.check_train_bpe(
        lambda text, n: BPETokenizer.train(text, 256 + n, pattern=check.WHOLE_TEXT).merges)
    assert "✓ train_bpe" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda text, n: train(text, n, pick="first"), ["ties", "smallest pair"]),
    (lambda text, n: train(text, n, pick="most_common"), ["ties", "most_common"]),
    (lambda text, n: train(text, n, pick="largest"), ["smallest pair, not the largest"]),
    (lambda text, n: train(text, n, first_id=257), ["256 + k", "one too high"]),
    (lambda text, n: train(text, n, first_id=255), ["256 + k", "255"]),
    (train_without_recount, ["redone after every merge"]),
    (lambda text, n: train(text, n - 1), ["returned", "merges, expected"]),
    (lambda text, n: [(p, 1) for p in train(text, n)], ["only the pairs"]),
    (lambda text, n: train(text, n)[:-1] + [(1, 2)], ["merge", "should be"]),
    (todo, ["not written yet"]),
])
def test_train_names_the_mistake(wrong, words):
    fails(check.check_train_bpe, wrong, *words)


# ---- exercise 6: encoding with the merges -------------------------------------------------------


def encode(text, merges):
    rank = {pair: 256 + k for k, pair in enumerate(merges)}
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        pair = min(pairwise(ids), key=lambda p: rank.get(p, float("inf")))
        if pair not in rank:
            break
        ids = merge(ids, pair, rank[pair])
    return ids


def encode_in_learned_order(text, merges):  # equivalent to eq. (1.4): must pass too
    ids = list(text.encode("utf-8"))
    for k, pair in enumerate(merges):
        ids = merge(ids, pair, 256 + k)
    return ids


def encode_reversed(text, merges):
    ids = list(text.encode("utf-8"))
    for k in reversed(range(len(merges))):
        ids = merge(ids, merges[k], 256 + k)
    return ids


def encode_by_frequency(text, merges):
    rank = {pair: 256 + k for k, pair in enumerate(merges)}
    ids = list(text.encode("utf-8"))
    while True:
        counts = Counter(p for p in pairwise(ids) if p in rank)
        if not counts:
            return ids
        pair = min(counts, key=lambda p: (-counts[p], p))
        ids = merge(ids, pair, rank[pair])


def encode_once(text, merges):
    rank = {pair: 256 + k for k, pair in enumerate(merges)}
    ids = list(text.encode("utf-8"))
    present = [p for p in pairwise(ids) if p in rank]
    if present:
        pair = min(present, key=rank.get)
        ids = merge(ids, pair, rank[pair])
    return ids


def encode_code_points(text, merges):
    ids = [ord(c) for c in text]
    for k, pair in enumerate(merges):
        ids = merge(ids, pair, 256 + k)
    return ids


def test_encode_passes_on_both_ways_of_applying_the_merges(capsys):
    check.check_encode(encode)
    check.check_encode(encode_in_learned_order)
    assert "✓ encode" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (encode_reversed, ["reverse order"]),
    (encode_by_frequency, ["most frequent pair", "smallest rank"]),
    (encode_once, ["only one merge"]),
    (encode_code_points, ["UTF-8 bytes", "ord"]),
    (lambda text, merges: list(text.encode("utf-8")), ["not right"]),
    (todo, ["not written yet"]),
])
def test_encode_names_the_mistake(wrong, words):
    fails(check.check_encode, wrong, *words)


# ---- exercise 7: " the" and "the" ---------------------------------------------------------------


def test_leading_space_passes_on_the_right_answer(capsys):
    check.check_leading_space("b")
    out = capsys.readouterr().out
    assert "[1169]" in out and "[262]" in out and "✓ leading_space" in out


@pytest.mark.parametrize("answer, words", [
    (None, ["not answered yet"]),
    ("a", ["nothing is lowercased"]),
    ("c", ["single id"]),
    ("d", ["not hashes"]),
    ("e", ["one of"]),
])
def test_leading_space_explains_wrong_answers(answer, words):
    fails(check.check_leading_space, answer, *words)


# ---- every check: answers remembered for the fixed examples are not enough ---------------------


@pytest.mark.parametrize("check_function, right", [
    (check.check_utf8_bytes, utf8_bytes),
    (check.check_compression_ratio, compression_ratio),
    (check.check_pair_counts, pair_counts),
    (check.check_merge, merge),
    (check.check_train_bpe, train),
    (check.check_encode, encode),
], ids=["utf8_bytes", "compression_ratio", "pair_counts", "merge", "train_bpe", "encode"])
def test_checks_reject_answers_remembered_for_their_fixed_examples(check_function, right):
    rejects_remembered_answers(check_function, right)
