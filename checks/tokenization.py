"""Checks for exercises/01_tokenization.ipynb, which practises notebooks/01_tokenization.ipynb.

Each check calls the learner's function on several inputs, compares it with `minigpt.tokenizer`
and with an independent reference (Python's own UTF-8 codec, a brute-force loop, `tiktoken`), and
when the answer is wrong, recomputes the typical wrong answers to say which one it is.
"""

from __future__ import annotations

import random
from collections import Counter
from itertools import pairwise

from checks.core import (
    CheckFailed,
    answered,
    call,
    diagnose,
    fresh_case,
    fresh_seed,
    passed,
    require,
)

# One chunk holding the whole text: BPE without pre-tokenization, as in section 4 of notebook 01.
WHOLE_TEXT = r"[\s\S]+"

# Characters at the edges of the UTF-8 length classes, plus some everyday ones.
BOUNDARY_CHARS = ["\x00", "a", "\x7f", "\x80", "é", "ж", "\u07ff", "\u0800", "€", "猫",
                  "\uffff", "\U00010000", "🙂", "\U0010ffff"]
SAMPLE_TEXTS = ["", "the café reads 🙂 tokens", "Kaffee kostet 3 € im Café", "猫は暖かい窓辺で"]

MY_TEXT = (
    "the reader reads the tokens, the tokenizer reads the text,\n"
    "and the tokens are the only thing the model ever reads.\n"
    "a token is a number; the number is a row; the row is read.\n"
)


# ---------------------------------------------------------------------------------------------
# Exercise 1: UTF-8 by hand


def check_utf8_bytes(utf8_bytes) -> None:
    """`utf8_bytes(text)` returns the UTF-8 bytes of `text` as a list of ints."""
    for ch in BOUNDARY_CHARS:
        _check_one_char(utf8_bytes, ch)
    for text in SAMPLE_TEXTS:
        _check_utf8_text(utf8_bytes, text)
    seed = fresh_seed()
    with fresh_case(seed):  # characters of every length class, drawn anew at every run
        text = _random_text(random.Random(seed), 12)
        for ch in text:
            _check_one_char(utf8_bytes, ch)
        _check_utf8_text(utf8_bytes, text)
    passed("utf8_bytes")


def _random_text(rng: random.Random, length: int) -> str:
    """`length` characters, each from a UTF-8 length class chosen at random (no surrogates)."""
    ranges = [(0x20, 0x7E), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF),
              (0x10000, 0x10FFFF)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(length))


def _check_utf8_text(utf8_bytes, text: str) -> None:
    from minigpt.tokenizer import ByteTokenizer

    ids = _as_id_list(call(utf8_bytes, text), f"utf8_bytes({text!r})")
    require(ids == list(text.encode("utf-8")),
            f"utf8_bytes({text!r}) gives {ids}, expected {list(text.encode('utf-8'))}: every "
            "character is right on its own, so check how you join the characters' bytes")
    require(ids == ByteTokenizer().encode(text), "disagrees with minigpt's ByteTokenizer")


def _check_one_char(utf8_bytes, ch: str) -> None:
    expected = list(ch.encode("utf-8"))
    got = _as_id_list(call(utf8_bytes, ch), f"utf8_bytes({ch!r})")
    if got == expected:
        return
    code = ord(ch)
    where = f"U+{code:04X} ({ch!r})"
    diagnosis = diagnose(got, {
        "you returned the code point (ord), not its UTF-8 bytes":
            [code],
        "the bytes are in reverse order: the lead byte (110…, 1110… or 11110…) comes first":
            expected[::-1],
        "that is UTF-16, not UTF-8": list(ch.encode("utf-16-le")),
        "the continuation bytes lack their marker: each must be 0b10xxxxxx (add 0x80 to the "
        "6-bit group)": [expected[0]] + [b & 0x3F for b in expected[1:]],
        "the lead byte lacks its length marker (0b110xxxxx for 2 bytes, 0b1110xxxx for 3, "
        "0b11110xxx for 4)": [_payload_of_lead(expected)] + expected[1:],
    })
    if diagnosis:
        raise CheckFailed(f"utf8_bytes({ch!r}), {where}: {diagnosis}; expected {expected}, "
                          f"got {got}")
    if got and len(got) != len(expected):
        raise CheckFailed(
            f"{where} takes {len(expected)} byte(s) in UTF-8, your function gave {len(got)}: "
            "check the range boundaries — U+007F is the last 1-byte code point, U+07FF the last "
            "2-byte one, U+FFFF the last 3-byte one (use <=, not <)")
    raise CheckFailed(f"utf8_bytes({ch!r}), {where}: expected {expected} "
                      f"({_bits(expected)}), got {got} ({_bits(got)})")


def _payload_of_lead(expected: list[int]) -> int:
    masks = {1: 0x7F, 2: 0x1F, 3: 0x0F, 4: 0x07}
    return expected[0] & masks[len(expected)]


def _bits(ids: list[int]) -> str:
    return " ".join(f"{b:08b}" if 0 <= b < 256 else str(b) for b in ids)


def _as_id_list(value, what: str) -> list[int]:
    if isinstance(value, bytes | bytearray):
        raise CheckFailed(f"{what} returned a bytes object; return a list of ints "
                          "(list(some_bytes) makes one)")
    if not isinstance(value, list | tuple):
        raise CheckFailed(f"{what} should return a list of ints, got {type(value).__name__}")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise CheckFailed(f"{what} should return a list of ints, got {list(value)[:8]}")
    return list(value)


# ---------------------------------------------------------------------------------------------
# Exercise 2: compression ratio, eq. (1.1)


def check_compression_ratio(ratio) -> None:
    """`ratio(tokenizer, text)` = UTF-8 bytes / tokens, eq. (1.1)."""
    from minigpt.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer, gpt2_tokenizer

    text = "Kaffee kostet 3 € im Café; 猫 and 🙂 cost more. the the the"
    tokenizers = {
        "ByteTokenizer": ByteTokenizer(),
        "CharTokenizer": CharTokenizer.from_text(text),
        "a small BPETokenizer": BPETokenizer.train(MY_TEXT + text, 300),
        "GPT-2's tokenizer": gpt2_tokenizer(),
    }
    for name, tokenizer in tokenizers.items():
        _check_ratio_case(ratio, name, tokenizer, text)
    seed = fresh_seed()
    with fresh_case(seed):  # a text no one knew in advance
        rng = random.Random(seed)
        words = MY_TEXT.split() + ["Café", "naïve", "東京", "🙂", "3 €"]
        text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 30)))
        for name, tokenizer in (("GPT-2's tokenizer", gpt2_tokenizer()),
                                ("CharTokenizer", CharTokenizer.from_text(text))):
            _check_ratio_case(ratio, f"{name} on the text {text!r}", tokenizer, text)
    passed("compression_ratio")


def _check_ratio_case(ratio, name: str, tokenizer, text: str) -> None:
    from minigpt.tokenizer import compression_ratio

    ids = tokenizer.encode(text)
    n_bytes, n_tokens = len(text.encode("utf-8")), len(ids)
    expected = n_bytes / n_tokens
    assert abs(compression_ratio(tokenizer, text) - expected) < 1e-12  # the package agrees
    got = call(ratio, tokenizer, text)
    require(isinstance(got, int | float) and not isinstance(got, bool),
            f"the ratio should be a number, got {type(got).__name__}")
    if abs(got - expected) <= 1e-9 * expected:
        return
    require(not (isinstance(got, int) and got == n_bytes // n_tokens),
            f"with {name}: integer division (//) dropped the fractional part; use /")
    diagnosis = diagnose(float(got), {
        "you divided characters by tokens; eq. (1.1) counts UTF-8 bytes "
        "(len(text.encode('utf-8'))), and '€', '猫' or '🙂' are several bytes each":
            len(text) / n_tokens,
        "the ratio is upside down: tokens / bytes instead of bytes / tokens":
            n_tokens / n_bytes,
        "you counted distinct tokens (the vocabulary used) instead of all tokens":
            n_bytes / len(set(ids)),
    }, rtol=1e-9, atol=0.0)
    if diagnosis:
        raise CheckFailed(f"with {name}: {diagnosis}")
    raise CheckFailed(f"with {name}: got {got:.4f}, expected {expected:.4f} "
                      f"({n_bytes} bytes / {n_tokens} tokens)")


# ---------------------------------------------------------------------------------------------
# Exercise 3: pair counts, eq. (1.2)


def check_pair_counts(count_pairs) -> None:
    """`count_pairs(ids)` returns {(a, b): how often b directly follows a}."""
    # The long text comes first: on it, each typical mistake gives a different wrong answer.
    cases = [list(MY_TEXT.encode("utf-8")), [3, 1, 4, 1, 5], [1, 2, 1, 2], [5, 5, 5], [], [7]]
    for ids in cases:
        _check_pairs_case(count_pairs, ids)
    seed = fresh_seed()
    with fresh_case(seed):  # ids no one knew in advance
        rng = random.Random(seed)
        _check_pairs_case(count_pairs, [rng.randrange(6) for _ in range(rng.randint(8, 40))])
    passed("count_pairs")


def _check_pairs_case(count_pairs, ids: list[int]) -> None:
    from minigpt.tokenizer import pair_counts

    original = list(ids)
    got = call(count_pairs, ids)
    require(ids == original, "count_pairs changed the list it was given; count, don't edit")
    shown = _short(ids)
    if not isinstance(got, dict):
        raise CheckFailed(f"count_pairs({shown}) should return a dict, got {type(got).__name__}")
    bad_keys = [key for key in got if not (isinstance(key, tuple) and len(key) == 2)]
    require(not bad_keys, f"the keys should be (a, b) tuples of two ids, got {bad_keys[:1]}")
    expected = dict(Counter(pairwise(ids)))  # the independent reference
    assert expected == pair_counts(ids)  # ... and the package agree
    got = dict(got)
    if got == expected:
        return
    diagnosis = diagnose(got, {
        "pairs overlap: in [5, 5, 5] the pair (5, 5) occurs twice, at positions 0 and 1; "
        "step through the list one position at a time, not two":
            dict(Counter(zip(ids[::2], ids[1::2], strict=False))),
        "you also counted the pair (last, first) that wraps around the end":
            dict(Counter(pairwise(ids + ids[:1]))) if len(ids) > 1 else None,
        "the last pair is missing: the pairs are (ids[i], ids[i+1]) for i up to len(ids) - 2 "
        "inclusive (an off-by-one in the range)":
            dict(Counter(pairwise(ids[:-1]))),
        "every count is 1: you recorded which pairs occur, not how often":
            {pair: 1 for pair in expected},
        "the pairs are reversed: the key is (left id, right id) = (ids[i], ids[i+1])":
            {(b, a): n for (a, b), n in expected.items()},
    })
    if diagnosis:
        raise CheckFailed(f"count_pairs({shown}): {diagnosis}")
    raise CheckFailed(f"count_pairs({shown}) is not right: {_dict_difference(got, expected)}")


# ---------------------------------------------------------------------------------------------
# Exercise 4: one merge step, eq. (1.3)


def check_merge(merge_pair) -> None:
    """`merge_pair(ids, pair, new_id)` replaces each occurrence of pair, left to right."""
    text_ids = list(MY_TEXT.encode("utf-8"))
    cases = [([5, 5, 5], (5, 5), 9), ([1, 2, 3, 1, 2], (1, 2), 256), ([1, 2], (1, 2), 256),
             ([], (1, 2), 256), ([1], (1, 2), 256), ([3, 1, 2], (1, 2), 300),
             ([5, 5, 5, 5], (5, 5), 9), (text_ids, (32, 116), 256), ([2, 1, 2, 1], (1, 2), 256)]
    for ids, pair, new_id in cases:
        _check_merge_case(merge_pair, ids, pair, new_id)
    seed = fresh_seed()
    with fresh_case(seed):  # ids, pair and new id no one knew in advance
        rng = random.Random(seed)
        ids = [rng.randrange(4) for _ in range(rng.randint(10, 40))]
        i = rng.randrange(len(ids) - 1)
        _check_merge_case(merge_pair, ids, (ids[i], ids[i + 1]), rng.randint(256, 999))
    passed("merge_pair")


def _check_merge_case(merge_pair, ids, pair, new_id) -> None:
    from minigpt.tokenizer import merge

    original = list(ids)
    got = _as_id_list(call(merge_pair, ids, pair, new_id),
                      f"merge_pair({_short(ids)}, {pair}, {new_id})")
    require(ids == original, "merge_pair changed the list it was given; build a new list "
                             "(the trainer still needs the old one to compare)")
    expected = _merge(ids, pair, new_id)
    assert expected == merge(ids, pair, new_id)  # reference == package
    if got == expected:
        return
    diagnosis = diagnose(got, {
        "nothing was replaced; note that a list never equals a tuple in Python "
        "([1, 2] == (1, 2) is False), so compare (ids[i], ids[i + 1]) == pair":
            list(ids) if pair in pairwise(ids) else None,
        "after a match, skip both ids of the pair (advance by 2): the second one is "
        "already inside the new id": _merge_no_skip(ids, pair, new_id),
        "the last id went missing: when the loop stops one short of the end to look at "
        "(ids[i], ids[i+1]), the final id must still be copied":
            _merge_drop_tail(ids, pair, new_id),
        "only the first occurrence was replaced; eq. (1.3) replaces every occurrence":
            _merge_first(ids, pair, new_id),
        "you scanned right to left: in [5, 5, 5] the left pair is merged, giving [9, 5]":
            _merge(ids[::-1], pair[::-1], new_id)[::-1],
    })
    call_text = f"merge_pair({_short(ids)}, {pair}, {new_id})"
    if diagnosis:
        raise CheckFailed(f"{call_text}: {diagnosis}; expected {_short(expected)}, "
                          f"got {_short(got)}")
    raise CheckFailed(f"{call_text} is not right: {_list_difference(got, expected)}")


def _merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_no_skip(ids, pair, new_id):
    out = []
    for i in range(len(ids)):  # emits the new id, then still emits the pair's second id
        is_match = i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair)
        out.append(new_id if is_match else ids[i])
    return out


def _merge_drop_tail(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:  # stops one short: a final id not inside a pair is lost
        if (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_first(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return list(ids[:i]) + [new_id] + list(ids[i + 2:])
    return list(ids)


# ---------------------------------------------------------------------------------------------
# Exercise 5: a full tiny BPE trainer


def check_train_bpe(train_bpe) -> None:
    """`train_bpe(text, n_merges)` returns the merge table [(a, b), ...] of eq. (1.2)-(1.3)."""
    # The long text first: on it, each typical mistake gives a different wrong answer.
    for text, n_merges in [(MY_TEXT, 12), ("banana bandana", 5), ("zz yy zz yy xa xa", 4),
                           ("aaaa", 2), ("the café reads 🙂 the café", 6)]:
        _check_train_case(train_bpe, text, n_merges)
    seed = fresh_seed()
    with fresh_case(seed):  # a text and a number of merges no one knew in advance
        rng = random.Random(seed)
        text = "".join(rng.choice("ab né") for _ in range(rng.randint(20, 60)))
        _check_train_case(train_bpe, text, rng.randint(2, 8))
    passed("train_bpe")


def _check_train_case(train_bpe, text: str, n_merges: int) -> None:
    from minigpt.tokenizer import BPETokenizer

    raw = call(train_bpe, text, n_merges)
    got = _as_merge_list(raw, f"train_bpe({_short_text(text)}, {n_merges})")
    ids = list(text.encode("utf-8"))
    expected = _train(ids, n_merges)
    package = BPETokenizer.train(text, 256 + n_merges, pattern=WHOLE_TEXT).merges
    assert expected == package  # reference == package
    if got == expected:
        return
    call_text = f"train_bpe({_short_text(text)}, {n_merges})"
    diagnosis = diagnose(got, {
        "ties: when pairs are equally frequent, eq. (1.2) takes the smallest pair (compare "
        "a, then b); `max(counts, key=counts.get)` or `most_common` takes the pair counted "
        "first instead — use min(counts, key=lambda p: (-counts[p], p))":
            _train(ids, n_merges, tie="first"),
        "ties go to the smallest pair, not the largest: key=lambda p: (-counts[p], p)":
            _train(ids, n_merges, tie="largest"),
        "merge k must get the new id 256 + k (ids 0..255 are the bytes): your ids are one "
        "too high": _train(ids, n_merges, first_id=257),
        "merge k must get the new id 256 + k: your ids start at 255, which is a byte":
            _train(ids, n_merges, first_id=255),
        "the counts must be redone after every merge (the sequence changed); you took the "
        "top pairs of the first count": _train(ids, n_merges, recount=False),
    })
    if diagnosis:
        raise CheckFailed(f"{call_text}: {diagnosis}")
    require(len(got) == len(expected),
            f"{call_text} returned {len(got)} merges, expected {len(expected)}")
    first = next(k for k, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
    raise CheckFailed(
        f"{call_text}: merge {first} (new id {256 + first}) should be {expected[first]}, "
        f"got {got[first]}; the merges before it agree")


def _train(ids, n_merges, tie="smallest", first_id=256, recount=True):
    """The trainer of notebook 01, and the typical ways it goes wrong."""
    if not recount:  # the n most frequent pairs of the first count, never recounted
        counts = Counter(pairwise(ids))
        return sorted(counts, key=lambda p: (-counts[p], p))[:n_merges]
    ids, merges = list(ids), []
    for k in range(n_merges):
        counts = Counter(pairwise(ids))  # in order of first occurrence
        if not counts:
            break
        if tie == "first":
            pair = max(counts, key=counts.get)  # the most frequent pair counted first
        elif tie == "largest":
            pair = max(counts, key=lambda p: (counts[p], p))
        else:
            pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        ids = _merge(ids, pair, first_id + k)
    return merges


def _as_merge_list(value, what: str) -> list[tuple[int, int]]:
    if not isinstance(value, list | tuple):
        raise CheckFailed(f"{what} should return a list of (a, b) pairs, got "
                          f"{type(value).__name__}")
    merges = []
    for item in value:
        if (isinstance(item, list | tuple) and len(item) == 2
                and all(isinstance(i, int) for i in item)):
            merges.append((item[0], item[1]))
        elif isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], tuple):
            raise CheckFailed(f"{what} should return only the pairs, got {item!r}: drop the "
                              "counts (or new ids) from the list")
        else:
            raise CheckFailed(f"{what} should return a list of (a, b) pairs of ids, got an "
                              f"item {item!r}")
    return merges


# ---------------------------------------------------------------------------------------------
# Exercise 6: encoding new text with the merges, eq. (1.4)


def check_encode(encode) -> None:
    """`encode(text, merges)` applies the learned merges in the order they were learned."""
    from minigpt.tokenizer import BPETokenizer

    tokenizer = BPETokenizer.train(MY_TEXT, 256 + 30, pattern=WHOLE_TEXT)
    for text in ["the reader is the model; the tokens are read.", "", "t", MY_TEXT,
                 "the café reads 🙂 the tokens", "aaaa reader rereads", "her er er er"]:
        _check_encode_case(encode, tokenizer, text)
    seed = fresh_seed()
    with fresh_case(seed):  # a text no one knew in advance
        rng = random.Random(seed)
        words = MY_TEXT.split() + ["café", "🙂", "rereads", "tokenizers"]
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 15)))
        _check_encode_case(encode, tokenizer, text)
    passed("encode")


def _check_encode_case(encode, tokenizer, text: str) -> None:
    merges = tokenizer.merges
    got = _as_id_list(call(encode, text, list(merges)), f"encode({_short_text(text)}, merges)")
    expected = tokenizer.encode_reference(text)  # the package's eq. (1.4)
    assert expected == tokenizer.encode(text)  # tiktoken, an independent implementation
    if got == expected:
        return
    ids = list(text.encode("utf-8"))
    diagnosis = diagnose(got, {
        "you applied the merges in reverse order; a later merge can only apply after the "
        "earlier merges that build its parts": _encode_reversed(ids, merges),
        "you merged the most frequent pair of the text; encoding merges the pair with the "
        "smallest rank (the earliest-learned merge, eq. 1.4), whatever its count here":
            _encode_by_frequency(ids, merges),
        "only one merge was applied; repeat until no adjacent pair is in the merge table":
            _encode_steps(ids, merges, 1),
        "start from the UTF-8 bytes of the text, not the code points (ord)":
            _encode_steps([ord(c) for c in text], merges) if not text.isascii() else None,
    })
    call_text = f"encode({_short_text(text)}, merges)"
    if diagnosis:
        raise CheckFailed(f"{call_text}: {diagnosis}")
    raise CheckFailed(f"{call_text} is not right: {_list_difference(got, expected)}")


def _encode_steps(ids, merges, max_steps=None):
    """Eq. (1.4): merge the present pair of smallest rank, at most `max_steps` times."""
    rank = {tuple(pair): 256 + k for k, pair in enumerate(merges)}
    steps = 0
    while max_steps is None or steps < max_steps:
        present = [p for p in pairwise(ids) if p in rank]
        if not present:
            break
        pair = min(present, key=rank.get)
        ids = _merge(ids, pair, rank[pair])
        steps += 1
    return list(ids)


def _encode_reversed(ids, merges):
    for k in reversed(range(len(merges))):  # the last-learned merge first
        ids = _merge(ids, tuple(merges[k]), 256 + k)
    return list(ids)


def _encode_by_frequency(ids, merges):
    rank = {tuple(pair): 256 + k for k, pair in enumerate(merges)}
    ids = list(ids)
    while True:
        counts = Counter(p for p in pairwise(ids) if p in rank)
        if not counts:
            return ids
        pair = min(counts, key=lambda p: (-counts[p], p))
        ids = _merge(ids, pair, rank[pair])


# ---------------------------------------------------------------------------------------------
# Exercise 7: why " the" and "the" are different tokens

LEADING_SPACE_OPTIONS = {
    "a": "GPT-2 lowercases and strips the text first, so the two ids differ only by accident",
    "b": "pre-tokenization glues a word to the space before it, so ' the' is a chunk of its own; "
         "BPE learned it as one token because it is so frequent inside sentences, while 'the' "
         "(start of a text or line) is a different chunk with its own token",
    "c": "the space is a token of its own, and 262 is the id of ' ' combined with the id of "
         "'the'",
    "d": "token ids are hashes of the token's text, so any change to the text changes the id",
}
LEADING_SPACE_WHY_NOT = {
    "a": "not quite: nothing is lowercased — 'The' and ' The' get their own ids too, and "
         "decode(encode(text)) gives the text back exactly",
    "c": "not quite: gpt2.encode(' the') is a single id, [262]; no id is computed from two "
         "others — a merged token's id is simply its place in the merge table",
    "d": "not quite: ids are not hashes; a merged token's id is its rank, 256 + the merge's "
         "place in the table, so frequent early merges such as ' the' get small ids",
}


def check_leading_space(answer) -> None:
    """Multiple choice: why GPT-2 gives "the" and " the" different ids."""
    answered(answer, "`answer`")
    choice = str(answer).strip().lower().strip("()")
    require(choice in LEADING_SPACE_OPTIONS,
            f"`answer` should be one of 'a', 'b', 'c', 'd', got {answer!r}")
    if choice != "b":
        raise CheckFailed(f"({choice}) is {LEADING_SPACE_WHY_NOT[choice]}")
    import regex

    from minigpt.tokenizer import GPT2_SPLIT_PATTERN, gpt2_tokenizer

    gpt2 = gpt2_tokenizer()
    chunks = regex.findall(GPT2_SPLIT_PATTERN, "the cat saw the dog")
    print(f"chunks of 'the cat saw the dog': {chunks}; "
          f"'the' -> {gpt2.encode('the')}, ' the' -> {gpt2.encode(' the')}")
    passed("leading_space")


# ---------------------------------------------------------------------------------------------
# Messages


def _short(ids, limit: int = 12) -> str:
    ids = list(ids)
    return str(ids) if len(ids) <= limit else f"[{', '.join(map(str, ids[:limit]))}, …]"


def _short_text(text: str, limit: int = 24) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def _list_difference(got: list, expected: list) -> str:
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return (f"from position {i} on you have {_short(got[i:], 6)}, expected "
                    f"{_short(expected[i:], 6)}")
    return f"you returned {len(got)} ids, expected {len(expected)}"


def _dict_difference(got: dict, expected: dict) -> str:
    for pair, n in expected.items():
        if got.get(pair) != n:
            return f"pair {pair} occurs {n} time(s), you have {got.get(pair, 0)}"
    extra = next(pair for pair in got if pair not in expected)
    return f"pair {extra} does not occur, but you counted it {got[extra]} time(s)"
