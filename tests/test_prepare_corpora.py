"""Large corpora for prepare: folders of .txt, .jsonl, .jsonl.gz and .parquet files, and
Hugging Face datasets, every document of them used."""

from __future__ import annotations

import gzip
import json
import random
import sys
import types

import numpy as np
import pytest
from corpus_helpers import WORDS, EotByteTokenizer

from minigpt.data import (
    Corpus,
    corpus_from_settings,
    in_validation,
    load_corpus,
    load_meta,
    load_tokens,
    prepare,
)
from minigpt.tokenizer import ByteTokenizer


def texts(rng: random.Random, n: int, tag: str) -> list[str]:
    """`n` distinct small documents (each names its source and number)."""
    return [f"{tag} {k}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
            for k in range(n)]


def split_documents(out, split) -> list[str]:
    """The documents of a prepared split, cut apart at the end-of-text token."""
    tokens = np.asarray(load_tokens(out, split))
    if tokens.size == 0:
        return []
    pieces = np.split(tokens, np.flatnonzero(tokens == 256))
    return [bytes(p[p != 256].astype(np.uint8)).decode() for p in pieces]


def write_jsonl(path, records, compress=False):
    lines = "".join(json.dumps(record) + "\n" for record in records).encode()
    path.write_bytes(gzip.compress(lines) if compress else lines)


def write_parquet(path, documents, field="text", row_group_size=None):
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    table = pa.table({field: documents, "id": list(range(len(documents)))})
    parquet.write_table(table, path, row_group_size=row_group_size)


def mixed_folder(tmp_path, with_parquet=True):
    """A folder of every format; returns it and its documents as (split key, text) in order."""
    rng = random.Random(0)
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    ordered = []  # (relative path, [(key, text), ...]) in the order prepare must read them
    for relpath in ("a.txt", "sub/b.md"):
        text = texts(rng, 1, relpath)[0]
        (folder / relpath).write_text(text)
        ordered.append((relpath, [(relpath, text)]))
    lines = texts(rng, 300, "c.jsonl")
    write_jsonl(folder / "c.jsonl", [{"text": t, "n": i} for i, t in enumerate(lines)])
    ordered.append(("c.jsonl", [(t, t) for t in lines]))
    packed = texts(rng, 200, "d.jsonl.gz")
    write_jsonl(folder / "d.jsonl.gz", [{"text": t} for t in packed], compress=True)
    ordered.append(("d.jsonl.gz", [(t, t) for t in packed]))
    if with_parquet:
        rows = texts(rng, 250, "e.parquet")
        write_parquet(folder / "e.parquet", rows, row_group_size=60)
        ordered.append(("e.parquet", [(t, t) for t in rows]))
    (folder / ".hidden.jsonl").write_text('{"text": "never read"}\n')
    documents = [item for _, items in sorted(ordered) for item in items]
    return folder, documents


@pytest.mark.parametrize("workers", [1, 2])
def test_a_folder_of_every_format_gives_every_document(tmp_path, workers, monkeypatch):
    # Many tasks: blocks, row groups, batches.
    monkeypatch.setattr("minigpt.documents.TASK_BYTES", 2000)
    folder, documents = mixed_folder(tmp_path)
    corpus = load_corpus(folder)
    assert corpus.streamed and corpus.source is not None
    out = prepare(corpus, EotByteTokenizer(), tmp_path / f"tokens{workers}", num_workers=workers,
                  progress=False)
    expected_val = [text for key, text in documents if in_validation(key)]
    expected_train = [text for key, text in documents if not in_validation(key)]
    assert len(expected_val) > 20 and len(expected_train) + len(expected_val) == 752
    assert split_documents(out, "train") == expected_train
    assert split_documents(out, "val") == expected_val
    meta = load_meta(out)
    assert meta["documents"] == {"train": len(expected_train), "val": len(expected_val)}
    # The lazy splits of the corpus read the same documents in the same order.
    assert list(corpus.train) == expected_train and list(corpus.val) == expected_val


def test_one_setting_sizes_the_tasks_of_every_source(tmp_path, monkeypatch):
    # TASK_BYTES lives in minigpt.documents; folders (minigpt.corpus_files) must follow it too.
    folder, documents = mixed_folder(tmp_path, with_parquet=False)
    in_memory = Corpus("mem", tuple(text for _, text in documents), ())

    def task_count(corpus):
        return sum(1 for _ in corpus.documents().tasks())

    counts = {name: task_count(corpus) for name, corpus in [("folder", load_corpus(folder)),
                                                             ("memory", in_memory)]}
    monkeypatch.setattr("minigpt.documents.TASK_BYTES", 2000)
    for name, corpus in [("folder", load_corpus(folder)), ("memory", in_memory)]:
        assert task_count(corpus) > 4 * counts[name], name


def test_a_single_record_file_is_a_corpus(tmp_path):
    rng = random.Random(1)
    documents = texts(rng, 120, "only")
    path = tmp_path / "only.jsonl.gz"
    write_jsonl(path, [{"text": t} for t in documents], compress=True)
    corpus = load_corpus(path)
    assert sorted([*corpus.train, *corpus.val]) == sorted(documents)
    assert list(corpus.val) == [t for t in documents if in_validation(t)]


def test_text_field_and_blank_or_empty_records(tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    (folder / "x.jsonl").write_text(
        '{"body": "first document"}\n\n{"body": ""}\n{"body": null}\r\n{"body": "second"}'
    )  # a blank line, an empty and a null text are skipped; \r\n and no final newline are fine
    out = prepare(load_corpus(folder, text_field="body"), EotByteTokenizer(), tmp_path / "t",
                  progress=False)
    assert sorted(split_documents(out, "train") + split_documents(out, "val")) == [
        "first document", "second"]


@pytest.mark.parametrize("content, words", [
    ('{"text": "fine"}\n{"text": "fine too"}\n{"text": oops}\n', ["line 3", "not valid JSON"]),
    ('{"text": "fine"}\n{"body": "no text"}\n', ["line 2", "no field 'text'", "text_field="]),
    ('{"text": "fine"}\n["a list"]\n', ["line 2", "no field 'text'"]),
    ('{"text": 42}\n', ["line 1", "holds a int"]),
    (b'{"text": "caf\xe9"}\n', ["line 1", "not valid JSON"]),
])
def test_bad_lines_name_the_file_and_line(tmp_path, content, words):
    folder = tmp_path / "bad"
    folder.mkdir()
    path = folder / "broken.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as excinfo:
        prepare(load_corpus(folder), ByteTokenizer(), tmp_path / "t", progress=False)
    message = str(excinfo.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_line_numbers_count_across_blocks(tmp_path, monkeypatch):
    # The bad line is blocks away from the top.
    monkeypatch.setattr("minigpt.documents.TASK_BYTES", 100)
    lines = [json.dumps({"text": f"line {i} " + "x" * 30}) for i in range(1, 200)]
    lines[156] = "{broken"
    path = tmp_path / "long.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(ValueError, match=r"long\.jsonl\.gz, line 157: not valid JSON"):
        prepare(path, ByteTokenizer(), tmp_path / "t", num_workers=1, progress=False)


def test_parquet_column_must_exist(tmp_path):
    write_parquet(tmp_path / "p.parquet", ["a document", "another"], field="content")
    with pytest.raises(ValueError, match=r"no column 'text'.*text_field="):
        prepare(tmp_path / "p.parquet", ByteTokenizer(), tmp_path / "t", progress=False)
    out = prepare(load_corpus(tmp_path / "p.parquet", text_field="content"), EotByteTokenizer(),
                  tmp_path / "t", progress=False)
    assert sorted(split_documents(out, "train") + split_documents(out, "val")) == [
        "a document", "another"]


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r'pyarrow: pip install "minigpt\[datasets\]"'):
        load_corpus(tmp_path)


def test_more_documents_than_the_old_cap(tmp_path):
    # hf: corpora stopped at 20,000 documents and folders held every document in memory.
    count = 25_000
    write_jsonl(tmp_path / "many.jsonl", [{"text": f"d{i}"} for i in range(count)])
    out = prepare(tmp_path / "many.jsonl", EotByteTokenizer(), tmp_path / "t", progress=False)
    meta = load_meta(out)
    assert meta["documents"]["train"] + meta["documents"]["val"] == count
    val = [f"d{i}" for i in range(count) if in_validation(f"d{i}")]
    assert split_documents(out, "val") == val


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets


class FakeStream:
    """What hf_corpus uses of a streamed `datasets.IterableDataset`, over a list of records."""

    def __init__(self, records, log):
        self.records, self.log, self.start, self.position = records, log, 0, 0

    def iter(self, batch_size):
        self.position = self.start
        while self.position < len(self.records):
            batch = self.records[self.position : self.position + batch_size]
            self.position += len(batch)
            yield {key: [record[key] for record in batch] for key in batch[0]}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.log.append(("resume", state["position"]))
        self.start = state["position"]


def fake_datasets(records, calls):
    def load_dataset(name, config, split, streaming, **options):
        calls.append((name, config, split, streaming, options))
        return FakeStream(records, calls)

    return types.SimpleNamespace(load_dataset=load_dataset)


def test_hf_streams_every_record_and_resumes_from_its_state(tmp_path, monkeypatch):
    records = [{"text": f"record {i} " * 3, "id": i} for i in range(25_000)]
    calls = []
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(records, calls))
    corpus = corpus_from_settings("hf:someone/web", "sample-10BT", "train", "text")
    assert calls[0][:4] == ("someone/web", "sample-10BT", "train", True)
    assert corpus.streamed and corpus.name == "hf:someone/web"
    out = prepare(corpus, ByteTokenizer(), tmp_path / "hf", progress=False)
    val = [r["text"] for r in records if in_validation(r["text"])]
    assert load_meta(out)["documents"] == {"train": 25_000 - len(val), "val": len(val)}
    assert list(corpus.val) == val

    # A task's position is the stream's own state: a new stream starts there.
    monkeypatch.setattr("minigpt.documents.TASK_BYTES", 10_000)
    source = corpus.source
    task, position, _ = next(iter(source.tasks()))
    assert position["records"] == len(task.texts) and position["state"]["position"] > 0
    rest = list(source.tasks(position))
    assert ("resume", position["state"]["position"]) in calls
    resumed = [text for task, _, _ in rest for text in task.texts]
    assert resumed == [r["text"] for r in records[position["records"] :]]


def test_hf_text_field_must_exist(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets([{"body": "x"}], []))
    corpus = corpus_from_settings("hf:someone/web")
    with pytest.raises(KeyError, match=r"no text field 'text'.*\['body'\].*text_field="):
        prepare(corpus, ByteTokenizer(), tmp_path / "t", progress=False)


def test_settings_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match=r"dataset_config='sample-10BT' applies to Hugging Face"):
        corpus_from_settings("stdlib", dataset_config="sample-10BT")
    with pytest.raises(ValueError, match=r"dataset_split='test' applies to Hugging Face"):
        corpus_from_settings("stdlib", dataset_split="test")
    with pytest.raises(ValueError, match=r"text_field='body' applies to hf:"):
        corpus_from_settings("stdlib", text_field="body")


def test_a_local_hugging_face_dataset_through_the_preset_path(tmp_path, cache, monkeypatch):
    """The gpt2-124m preset's path (TrainConfig -> Trainer.prepare_data -> hf_corpus ->
    datasets.load_dataset(..., streaming=True)) on a dataset folder written here."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    from minigpt.train import TrainConfig, Trainer

    rng = random.Random(2)
    dataset = tmp_path / "web"
    (dataset / "data").mkdir(parents=True)
    shards = [texts(rng, 700, f"shard{s}") for s in range(3)]
    for s, rows in enumerate(shards):
        write_parquet(dataset / "data" / f"train-{s:05d}-of-00003.parquet", rows,
                      field="content", row_group_size=200)
    config = TrainConfig(out_dir=str(tmp_path / "run"), dataset=f"hf:{dataset}",
                         text_field="content", tokenizer="byte", progress=False,
                         shard_tokens=5000)
    data_dir, tokenizer = Trainer.prepare_data(config, EotByteTokenizer())
    documents = [t for rows in shards for t in rows]
    val = [t for t in documents if in_validation(t)]
    meta = load_meta(data_dir)
    assert meta["documents"] == {"train": len(documents) - len(val), "val": len(val)}
    assert split_documents(data_dir, "val") == val
    assert split_documents(data_dir, "train") == [t for t in documents if t not in set(val)]
    assert len(meta["shards"]["train"]) > 3  # several shards, read as one stream


def test_the_gpt2_preset_reads_all_of_sample_10bt():
    from minigpt import config as configs
    from minigpt.train import TrainConfig

    preset = configs.build(TrainConfig, "gpt2-124m", [])
    assert preset.dataset == "hf:HuggingFaceFW/fineweb-edu"
    assert preset.dataset_config == "sample-10BT" and preset.dataset_split == "train"
    assert preset.max_tokens == 0 and preset.text_field == "text"


def test_in_memory_corpora_still_prepare_as_before(tmp_path):
    corpus = Corpus("pair", ("one document", "two documents"), ("held out",))
    out = prepare(corpus, EotByteTokenizer(), tmp_path / "t", progress=False)
    assert split_documents(out, "train") == ["one document", "two documents"]
    assert split_documents(out, "val") == ["held out"]
