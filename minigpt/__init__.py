"""minigpt: a GPT derived formula by formula, small enough to read and complete enough to train.

The package follows the course, one module per concept:

    tokenizer    01  characters, bytes, byte-pair encoding, GPT-2's tokenizer
    corpora      02  named text collections (the offline stdlib corpora, downloads, local files)
    data         02  token files, batch samplers (and the corpora, re-exported)
    attention    03-04  scaled dot-product attention, multi-head attention, KV cache
    positional   05  sinusoidal, learned and rotary position encodings
    layers       06  layer norm, feed-forward, the transformer block
    model        07  GPTConfig and GPT
    train        08, 13  the training loop, from a laptop CPU to several GPUs
    runs         08  a run's folder afterwards: load its model and tokenizer, measure its loss
    generate     09  sampling: greedy, temperature, top-k, top-p
    lora, finetune  10  low-rank adapters and instruction finetuning
    tasks        10-11  offline tasks built from the stdlib: summarise, generate code, QA, classify
    hf           11  Hugging Face GPT-2 weights in and out
    interpret    12  attention maps, logit lens, probes, bias probes
    hellaswag    13  the HellaSwag evaluation, scored as lm-evaluation-harness scores it
    nanogpt      07  nanoGPT checkpoints in

and the machinery around them: platform (device, precision, peak FLOP/s), checkpoint, runlock
(one run per folder), distributed, metrics, config (presets), download, the corpus pipeline at
scale (documents, corpus_files, document_encoding, prepare, shards: reading corpora of any size
and writing them as token shards, in parallel and resumably), benchmark, cli (the `minigpt`
command).
"""

__version__ = "0.1.0"

__all__ = ["GPT", "GPTConfig", "__version__"]


def __getattr__(name):
    # Imported lazily so that `import minigpt.tokenizer` does not pay for torch.
    if name in ("GPT", "GPTConfig"):
        from minigpt import model

        return getattr(model, name)
    raise AttributeError(f"module 'minigpt' has no attribute {name!r}")
