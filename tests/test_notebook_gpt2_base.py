"""The GPT-2 branch of notebooks 09-11 (`BASE = "gpt2"`), run offline on a random-weight GPT-2.

The committed notebooks run on the course's own model. A learner who has GPT-2's weights sets
`BASE = "gpt2"` in the parameters cell; this test takes that code path without a network: it saves
a small, randomly initialised `transformers.GPT2LMHeadModel` with GPT-2's vocabulary to a folder,
then executes each notebook with its parameters overridden the way papermill does it (a cell
injected after the `parameters` cell) and small sizes, and checks that every cell runs and that the
notebook says it used GPT-2. Random weights cannot beat any baseline, so the notebooks assert their
claims about quality on the course's model only; everything else (the derivations checked against
the package and against Hugging Face, the shapes, the files) runs here on GPT-2's layout.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Small sizes, so that each notebook runs in well under a minute on a CPU.
OVERRIDES = {
    "09_sampling": dict(BLOCK_SIZE=32, BATCH_SIZE=4, N_DRAWS=2_000, N_SAMPLES=2, SAMPLE_TOKENS=40,
                        # more timed runs than the notebook's 5: the median then survives a
                        # busy machine (a speed-up near 1 at 2 tokens against ~3 at 384)
                        TIMING_BLOCK_SIZE=384, TIMING_LENGTHS=(2, 384), TIMING_RUNS=9),
    "10_finetuning": dict(BATCH_SIZE=4, TEST_EXAMPLES=4, VAL_EXAMPLES=8, MAX_NEW_TOKENS=4,
                          FINETUNE_STEPS=2, SUMMARY_STEPS=2, WARMUP_STEPS=1, EXAMPLES_SHOWN=2),
    "11_applications": dict(PRETRAIN_ITERS=2, PRETRAIN_BATCH=2,
                            TRAIN_EXAMPLES=dict.fromkeys(("summarize", "codegen", "qa",
                                                          "translate"), 300),
                            FINETUNE_STEPS=2, FINETUNE_BATCH=2, TEST_EXAMPLES=50,
                            MAX_NEW_TOKENS=dict.fromkeys(("summarize", "codegen", "qa",
                                                          "translate"), 2),
                            SAMPLE_TOKENS=8, TLDR_TOKENS=8, CHECK_SCORES=False),
}


@pytest.fixture(scope="module")
def random_gpt2(tmp_path_factory) -> Path:
    """A GPT-2 folder (config.json, model.safetensors): random weights, GPT-2's vocabulary."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=50257,
                                     n_positions=256)
    folder = tmp_path_factory.mktemp("gpt2-random")
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def with_parameters(notebook, parameters: dict):
    """The notebook with a cell that sets `parameters` right after its `parameters` cell."""
    tagged = [i for i, cell in enumerate(notebook.cells)
              if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged `parameters`"
    lines = [f"{name} = {value!r}" for name, value in parameters.items()]
    injected = nbformat.v4.new_code_cell("\n".join(lines))
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(tagged[0] + 1, injected)
    return notebook


def printed_text(notebook) -> str:
    return "\n".join(output.get("text", "") for cell in notebook.cells
                     if cell.cell_type == "code" for output in cell.get("outputs", [])
                     if output.get("output_type") == "stream")


def test_injected_parameters_follow_the_parameters_cell():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import math"),
        nbformat.v4.new_code_cell("BASE = 'course'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(BASE)")])
    cells = with_parameters(notebook, {"BASE": "gpt2", "SIZES": (1, 2)}).cells
    assert [c.source for c in cells] == ["import math", "BASE = 'course'",
                                         "BASE = 'gpt2'\nSIZES = (1, 2)", "print(BASE)"]
    with pytest.raises(AssertionError, match="exactly one"):
        with_parameters(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), {})


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_notebook_runs_on_gpt2(name, random_gpt2, tmp_path):
    from nbconvert.preprocessors import ExecutePreprocessor

    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    parameters = {"BASE": "gpt2", "GPT2": str(random_gpt2), **OVERRIDES[name]}
    notebook = with_parameters(notebook, parameters)
    ExecutePreprocessor(timeout=600, kernel_name="python3").preprocess(
        notebook, {"metadata": {"path": str(tmp_path)}})
    text = printed_text(notebook)
    assert "base: gpt2" in text, "the notebook should say that it used GPT-2"
    assert "50,257" in text, "GPT-2's vocabulary should be the one in use"
    assert "base: course" not in text
