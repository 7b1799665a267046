"""Tests for minigpt.finetune: instruction data, the masked loss (eq. 10.1), batches, the
classification head (eq. 10.2), scores (eqs. 10.6-10.7), `finetune` and `minigpt finetune`."""

import dataclasses
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from minigpt import GPT, GPTConfig
from minigpt import finetune as ft
from minigpt.cli import main as cli_main
from minigpt.tokenizer import ByteTokenizer

BYTES = ByteTokenizer()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def byte_base(folder, seed=0, block_size=128, n_embd=48):
    """A randomly initialised byte-level GPT saved as a minigpt model folder."""
    torch.manual_seed(seed)
    GPT(GPTConfig(vocab_size=256, block_size=block_size, n_layer=2, n_head=2,
                  n_embd=n_embd)).save_pretrained(folder)
    BYTES.save(folder / "tokenizer.json")
    return folder


ADD = {"instruction": "Add the numbers.", "input": "1 2", "output": "3"}


# --------------------------------------------------------------------------- the masked loss


def test_prompt_template_is_the_documented_one():
    assert ft.format_prompt("Add the numbers.", "1 2") == (
        "Instruction: Add the numbers.\nInput:\n1 2\nResponse:\n")
    assert ft.format_prompt("Say hi.") == "Instruction: Say hi.\nResponse:\n"


def test_targets_mask_exactly_the_prompt_tokens():
    prompt = b"Instruction: Add the numbers.\nInput:\n1 2\nResponse:\n"  # written out by hand
    full = list(prompt) + list(b"3") + [3]  # the answer, then <end> = byte 0x03
    x, y = ft.encode_example(ADD, BYTES, max_length=100)
    assert x == full[:-1]
    assert y == [-100] * (len(prompt) - 1) + full[len(prompt):]


def test_instruction_loss_is_cross_entropy_over_the_response_tokens_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=96, n_layer=2, n_head=2, n_embd=32))
    example = {"instruction": "Reverse.", "input": "abc", "output": "cba"}
    x, y = ft.encode_example(example, BYTES, max_length=96)
    logits, loss = model(torch.tensor([x]), torch.tensor([y]))
    # by hand: the prompt is given; score the answer's 3 bytes and the end byte only
    prompt_length = len(b"Instruction: Reverse.\nInput:\nabc\nResponse:\n")
    answer = list(b"cba") + [3]
    log_probs = torch.log_softmax(logits[0].double(), dim=-1)
    terms = [-log_probs[prompt_length - 1 + i, token] for i, token in enumerate(answer)]
    expected = sum(terms) / len(terms)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # and it differs from the loss over every position, so the mask does something
    everything = F.cross_entropy(logits[0], torch.tensor(x[1:] + [3]))
    assert abs(everything.item() - loss.item()) > 1e-3


def test_chat_loss_covers_assistant_turns_only():
    example = {"messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "yo"},
                            {"role": "user", "content": "bye"},
                            {"role": "assistant", "content": "ok"}]}
    x, y = ft.encode_example(example, BYTES, max_length=200)
    text = b"System: Be brief.\nUser: hi\nAssistant: yo\x03User: bye\nAssistant: ok\x03"
    assert bytes(x) == text[:-1]
    learned = [bytes([t]) for t in y if t != -100]
    assert b"".join(learned) == b"yo\x03ok\x03"
    prompt = ft.prompt_ids(example, BYTES)
    assert bytes(prompt) == b"System: Be brief.\nUser: hi\nAssistant: yo\x03User: bye\nAssistant: "


def test_a_tokenizer_with_an_end_of_text_token_ends_responses_with_it():
    from minigpt.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    x, y = ft.encode_example(ADD, tok, max_length=100)
    assert y[-1] == tok.eot_token == 50256
    assert sum(t != -100 for t in y) == len(tok.encode("3")) + 1


def test_a_long_response_is_cut_and_a_long_prompt_is_an_error():
    long_answer = dict(ADD, output="9" * 100)
    x, y = ft.encode_example(long_answer, BYTES, max_length=60)
    assert len(x) == len(y) == 60 and y[-1] == ord("9")
    prompt = b"Instruction: Add the numbers.\nInput:\n1 2\nResponse:\n"
    assert len(prompt) == 51
    with pytest.raises(ValueError, match=r"the prompt has 51 tokens but max_length=51"):
        ft.encode_example(ADD, BYTES, max_length=51)
    assert len(ft.encode_example(ADD, BYTES, max_length=52)[1]) == 52  # room for one token


# --------------------------------------------------------------------------- reading data


def test_malformed_line_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ADD) + "\n\n" + '{"instruction": "x", "output": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: not valid JSON"):
        ft.load_examples(path)


def test_a_missing_field_names_the_file_and_the_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ADD, {"instruction": "no answer"}])
    with pytest.raises(ValueError, match=r"d\.jsonl, line 2: 'output' is missing"):
        ft.load_examples(path)
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(ValueError, match=r"c\.jsonl, line 1: no assistant message"):
        ft.load_examples(path)


def test_an_empty_dataset_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.jsonl holds no examples"):
        ft.load_examples(path)


def test_layouts_are_detected(tmp_path):
    rows = {"alpaca": ADD, "classification": {"text": "x", "label": 1},
            "chat": {"messages": [{"role": "assistant", "content": "hi"}]}}
    for layout, row in rows.items():
        examples, detected = ft.load_examples(write_jsonl(tmp_path / f"{layout}.jsonl", [row]))
        assert detected == layout
    assert examples[0]["messages"][0]["content"] == "hi"


# --------------------------------------------------------------------------- batches


def test_batches_pad_to_the_longest_with_targets_left_out():
    examples = [([1, 2, 3], [2, 3, 4]), ([5], [6]), ([7, 8], [-100, 9])]
    batches = ft.ExampleBatches(examples, batch_size=3, shuffle=False, pad_id=0)
    x, y = batches.next_batch()
    assert x.tolist() == [[1, 2, 3], [5, 0, 0], [7, 8, 0]]
    assert y.tolist() == [[2, 3, 4], [6, -100, -100], [-100, 9, -100]]


def test_each_epoch_is_a_seeded_shuffle_of_every_example():
    examples = [([i], [i]) for i in range(10)]

    def epochs(seed, n=3):
        batches = ft.ExampleBatches(examples, batch_size=4, seed=seed)
        seen = [batches.next_batch()[0][:, 0].tolist() for _ in range(3 * n)]  # 3 batches/epoch
        return [sum(seen[3 * e: 3 * e + 3], []) for e in range(n)]

    first = epochs(seed=7)
    assert all(sorted(epoch) == list(range(10)) for epoch in first)  # each example once
    assert first[0] != first[1] != first[2]  # a new order every epoch
    assert epochs(seed=7) == first  # the same seed, the same orders
    assert epochs(seed=8) != first


def test_batches_resume_exactly_from_their_state():
    examples = [([i, i + 1], [i + 1, i + 2]) for i in range(11)]
    batches = ft.ExampleBatches(examples, batch_size=3, seed=1)
    for _ in range(5):  # into the second epoch
        batches.next_batch()
    state = batches.state_dict()
    expected = [batches.next_batch()[0].tolist() for _ in range(4)]
    restored = ft.ExampleBatches(examples, batch_size=3, seed=1)
    restored.load_state_dict(state)
    assert [restored.next_batch()[0].tolist() for _ in range(4)] == expected
    with pytest.raises(ValueError, match="does not fit"):
        ft.ExampleBatches(examples[:5], batch_size=3, seed=1).load_state_dict(state)


# --------------------------------------------------------------------------- classification


def test_classifier_reads_the_last_real_token_of_each_sequence():
    torch.manual_seed(0)
    backbone = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16))
    model = ft.GPTClassifier(backbone, ["a", "b", "c"]).eval()
    sequences = [[3, 4, 5, 6], [7], [8, 9]]
    x, y = ft.ExampleBatches(list(zip(sequences, [0, 2, 1], strict=True)), 3, shuffle=False,
                             pad_id=ft.PAD_INPUT).next_batch()
    assert x[1].tolist() == [7, -1, -1, -1] and y.tolist() == [0, 2, 1]
    logits, loss = model(x, y)
    with torch.no_grad():  # each sequence alone, no padding: the head on its last position
        alone = torch.stack([model.head(backbone.hidden_states(torch.tensor([s]))[0, -1])
                             for s in sequences])
    torch.testing.assert_close(logits, alone, rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(alone, y).item(), rel=1e-5)
    assert model.predict(x) == [model.labels[i] for i in alone.argmax(-1).tolist()]


def test_classifier_flops_leave_out_the_unused_output_head():
    backbone = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16))
    model = ft.GPTClassifier(backbone, ["a", "b"])
    assert backbone.flops_per_token(8) - model.flops_per_token(8) == 3 * 2 * 16 * 50


# --------------------------------------------------------------------------- scores


def test_rouge_matches_a_hand_count():
    pytest.importorskip("rouge_score")
    scores = ft.rouge(["the cat sat"], ["The cat sat down"])
    # 3 of 3 predicted words are in the reference of 4: P = 1, R = 3/4, F = 2PR/(P+R) = 6/7;
    # the longest common subsequence is the same 3 words; bigrams: 2 of 2 in 3, F = 0.8
    assert scores["rouge1"] == pytest.approx(6 / 7)
    assert scores["rougeL"] == pytest.approx(6 / 7)
    assert scores["rouge2"] == pytest.approx(0.8)
    assert ft.rouge(["x y"], ["z"])["rougeL"] == 0.0


def test_exact_match_and_accuracy():
    assert ft.exact_match(["  a\nb  \n", "c"], ["a\nb", "d"]) == 0.5
    assert ft.accuracy(["x", "y", "y"], ["x", "y", "x"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        ft.accuracy(["x", "y"], ["x"])


# --------------------------------------------------------------------------- the run


def code_or_prose(split, n, seed):
    """Real standard-library lines: a `def` line (code) or a docstring's first line (prose)."""
    from minigpt import tasks

    functions = [f for f in tasks.stdlib_functions()
                 if f.summary and "\n" not in f.header and len(f.header) <= 70
                 and 20 <= len(f.summary) <= 70 and tasks.module_split(f.module) == split]
    chosen = random.Random(seed).sample(functions, n)
    return [{"instruction": "Code or prose?", "input": f.summary if i % 2 else f.header,
             "output": "prose" if i % 2 else "code"} for i, f in enumerate(chosen)]


@pytest.mark.slow
def test_a_short_finetune_learns_the_task(tmp_path):
    """150 seeded steps teach a randomly initialised byte model to tell code from prose.

    The base model answers with arbitrary bytes, so its exact match is 0. The classes are
    balanced, so a model that learned the answer format but not the input scores about 0.5;
    0.8 on 40 held-out lines (modules unseen in training) needs it to read the input. Seeded
    runs reach 0.97-1.0, so the margin is wide.
    """
    train = write_jsonl(tmp_path / "train.jsonl", code_or_prose("train", 200, seed=0))
    val_rows = code_or_prose("val", 40, seed=1)
    val = write_jsonl(tmp_path / "val.jsonl", val_rows)
    base = byte_base(tmp_path / "base")
    model, tokenizer = ft.load_base(str(base))
    references = [row["output"] for row in val_rows]
    before = ft.exact_match(ft.predict(model.eval(), tokenizer, val_rows, 8), references)
    config = ft.FinetuneConfig(data=str(train), val_data=str(val), base=str(base),
                               out_dir=str(tmp_path / "out"), method="full", steps=150,
                               batch_size=8, learning_rate=3e-3, warmup_steps=5,
                               eval_interval=1000, eval_examples=40, max_new_tokens=8,
                               seed=2, device="cpu", progress=False)
    scores = ft.finetune(config)
    assert before <= 0.1
    assert scores["exact_match"] >= 0.8
    # the saved model is the finetuned one: reloaded, it answers the same
    again, _ = ft.load_base(str(tmp_path / "out"))
    answers = ft.predict(again.eval(), BYTES, val_rows[:6], 8)
    assert ft.exact_match(answers, references[:6]) >= 0.5


def test_lora_run_saves_adapter_merged_model_and_tokenizer(tmp_path):
    from minigpt.lora import load_lora

    data = write_jsonl(tmp_path / "d.jsonl", [dict(ADD, input=f"{i} {i}", output=str(2 * i))
                                              for i in range(12)])
    base = byte_base(tmp_path / "base", block_size=64, n_embd=32)
    out = tmp_path / "out"
    config = ft.FinetuneConfig(data=str(data), base=str(base), out_dir=str(out), steps=4,
                               batch_size=4, learning_rate=1e-2, eval_examples=2,
                               max_new_tokens=4, device="cpu", progress=False)
    scores = ft.finetune(config)
    names = {p.name for p in out.iterdir()}
    assert {"adapter.safetensors", "model.safetensors", "config.json", "tokenizer.json",
            "finetune.json", "train"} <= names
    c = GPT.from_pretrained(base).config
    expected = c.n_layer * 8 * ((c.n_embd + 3 * c.n_embd) + (c.n_embd + c.n_embd))
    assert scores["trainable"] == expected
    assert math.isfinite(scores["val_loss"]) and "exact_match" in scores
    # base + adapter == the merged model saved beside it
    merged = GPT.from_pretrained(out).eval()
    rebuilt = load_lora(GPT.from_pretrained(base), out / "adapter.safetensors").eval()
    idx = torch.tensor([list(b"Instruction: Add")])
    with torch.no_grad():
        torch.testing.assert_close(merged(idx)[0], rebuilt(idx)[0], rtol=1e-5, atol=1e-5)
        assert (merged(idx)[0] - GPT.from_pretrained(base)(idx)[0]).abs().max() > 1e-4
    assert (out / "adapter.safetensors").stat().st_size < (out / "model.safetensors").stat(
    ).st_size / 4
    assert json.loads((out / "finetune.json").read_text())["steps"] == 4


def test_classification_run_trains_a_head_and_reloads(tmp_path):
    rows = [{"text": ("def f(x):\n    return x" if i % 2 else "Return the value."),
             "label": "code" if i % 2 else "prose"} for i in range(16)]
    data = write_jsonl(tmp_path / "c.jsonl", rows)
    base = byte_base(tmp_path / "base", block_size=64, n_embd=32)
    out = tmp_path / "out"
    scores = ft.finetune(ft.FinetuneConfig(data=str(data), base=str(base), out_dir=str(out),
                                           steps=3, batch_size=4, device="cpu",
                                           progress=False, val_fraction=0.25))
    assert 0 <= scores["accuracy"] <= 1
    classifier = ft.GPTClassifier.from_pretrained(out)
    assert classifier.labels == ["code", "prose"] and classifier.head.weight.shape == (2, 32)
    assert (out / "adapter.safetensors").is_file()


def test_prompts_longer_than_the_context_are_named_by_line_before_training(tmp_path, capsys):
    long = dict(ADD, input="x" * 200)
    data = write_jsonl(tmp_path / "d.jsonl", [ADD, long, ADD, long])
    base = byte_base(tmp_path / "base", block_size=64, n_embd=32)
    config = ft.FinetuneConfig(data=str(data), base=str(base), out_dir=str(tmp_path / "o"),
                               steps=1, device="cpu", progress=False, val_fraction=0)
    with pytest.raises(ValueError, match=r"2 of 4 examples in .*d\.jsonl leave no room for an "
                                         r"answer in max_length=64 tokens \(line 2, line 4;"):
        ft.finetune(config)
    assert not (tmp_path / "o").exists()
    # asking for more than the base's context is refused, not silently capped
    with pytest.raises(ValueError, match="max_length=100 exceeds the base model's context"):
        ft.finetune(dataclasses.replace(config, max_length=100))
    # skip_long leaves them out and says how many
    ft.finetune(dataclasses.replace(config, skip_long=True, eval_examples=0))
    assert "left out 2 of 4 examples" in capsys.readouterr().err


def test_config_checks_its_values():
    with pytest.raises(ValueError, match="method='qlora'"):
        ft.FinetuneConfig(method="qlora")
    with pytest.raises(ValueError, match="rank=0"):
        ft.FinetuneConfig(rank=0)
    with pytest.raises(ValueError, match="val_fraction"):
        ft.FinetuneConfig(val_fraction=1.0)
    assert ft.FinetuneConfig(targets="all").lora_targets() == ("qkv_proj", "out_proj", "fc",
                                                               "proj")
    assert ft.FinetuneConfig(targets="qkv_proj, fc").lora_targets() == ("qkv_proj", "fc")
    assert ft.FinetuneConfig(method="full").lr == 1e-4


# --------------------------------------------------------------------------- the command


def test_cli_finetune_help_lists_the_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["finetune", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for expected in ("--method", "rank=8", "data=''", "base='runs/tiny'", "max_length=0"):
        assert expected in text


def test_cli_finetune_runs_and_reports(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [ADD] * 6)
    base = byte_base(tmp_path / "base", block_size=64, n_embd=32)
    code = cli_main(["finetune", "--method", "full", f"base={base}", f"data={data}",
                     f"out_dir={tmp_path / 'out'}", "steps=2", "batch_size=2", "device=cpu",
                     "progress=false", "eval_examples=1", "max_new_tokens=2"])
    assert code == 0
    assert "val_loss" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "finetune.json").read_text())["config"]["method"] == (
        "full")
    assert cli_main(["finetune", "data=nowhere.jsonl", f"base={base}"]) == 2
    assert "no data file at nowhere.jsonl" in capsys.readouterr().err


def test_eval_of_a_finetune_scores_its_own_validation_answers(tmp_path, capsys):
    rows = [dict(ADD, input=f"{i} {i}", output=str(2 * i)) for i in range(12)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    base = byte_base(tmp_path / "base", block_size=64, n_embd=32)
    out = tmp_path / "out"
    scores = ft.finetune(ft.FinetuneConfig(data=str(data), base=str(base), out_dir=str(out),
                                           steps=3, batch_size=4, device="cpu", progress=False,
                                           val_fraction=0.25, eval_examples=0))
    assert cli_main(["eval", f"out_dir={out}", "device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert "over" in printed and "answer tokens" in printed and "25% of it, by seed" in printed
    loss = float(printed.split("val loss ")[1].split()[0])
    # the same held-out examples (one batch of 3) and loss as the finetune's last evaluation
    assert loss == pytest.approx(scores["val_loss"], rel=1e-4)


# --------------------------------------------------------------------------- GPT-2 end to end


@pytest.mark.slow
def test_gpt2_lora_merge_export_and_transformers_pipeline(tmp_path):
    """A (random, small) Hugging Face GPT-2 folder -> LoRA finetune -> merge -> save_hf ->
    transformers.pipeline generates the same greedy text as the merged minigpt model."""
    transformers = pytest.importorskip("transformers")
    from minigpt.hf import save_hf

    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2,
                                     n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf-base")
    data = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Name a colour.", "output": c} for c in ("red", "blue", "green") * 3])
    out = tmp_path / "out"
    ft.finetune(ft.FinetuneConfig(data=str(data), base=str(tmp_path / "hf-base"),
                                  out_dir=str(out), steps=3, batch_size=3, learning_rate=1e-2,
                                  eval_examples=1, max_new_tokens=4, device="cpu",
                                  progress=False))
    merged = GPT.from_pretrained(out).eval()
    base = GPT.from_pretrained(tmp_path / "hf-base").eval()
    qkv = "blocks.0.attn.qkv_proj.weight"
    assert not torch.equal(merged.state_dict()[qkv], base.state_dict()[qkv])  # LoRA folded in
    assert torch.equal(merged.token_emb.weight, base.token_emb.weight)  # not a target
    assert json.loads((out / "tokenizer.json").read_text())["type"] == "gpt2"

    save_hf(merged, tmp_path / "hf-out")
    generator = transformers.pipeline("text-generation", model=str(tmp_path / "hf-out"),
                                      device="cpu")
    prompt = ft.format_prompt("Name a colour.")
    result = generator(prompt, max_new_tokens=5, do_sample=False)[0]["generated_text"]
    ids = generator.tokenizer(prompt, return_tensors="pt").input_ids
    expected = merged.generate(ids, 5, temperature=0, eos_token=50256)
    assert result == generator.tokenizer.decode(expected[0])
    assert result.startswith(prompt) and len(result) > len(prompt)


def test_the_scored_validation_examples_are_a_seeded_draw_in_file_order():
    examples = [{"text": str(i), "label": "a" if i < 50 else "b"} for i in range(100)]
    config = ft.FinetuneConfig(eval_examples=10, seed=3)
    chosen = ft._scored(examples, config)
    assert len(chosen) == 10 and chosen == ft._scored(examples, config)
    positions = [examples.index(e) for e in chosen]
    assert positions == sorted(positions) and positions != list(range(10))
    assert {e["label"] for e in chosen} == {"a", "b"}  # not one class of a sorted file
    assert ft._scored(examples[:5], config) == examples[:5]
