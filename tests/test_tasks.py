"""Tests for minigpt.tasks: finetuning tasks built from the standard library at run time."""

import ast
import json
import re

import pytest

from minigpt import tasks
from minigpt.data import stdlib_sources
from minigpt.finetune import load_examples

FAKE_MODULE = '''"""A module."""

def plain(a, b=1, *, c='x', d=None):
    """Add things up.

    More words.
    """
    total = a + b
    return total


class Box:
    @property
    def size(self,
             unit="cm"):
        """Return the size."""
        if unit:
            return 3
        return 0

    def bare(self): return 1

    def nodoc(self, flag=False):
        return flag
\f
def after_form_feed(x=2.5):
    """Still found at the right lines."""
    return x
'''


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stdlib")
    (root / "pkg").mkdir()
    (root / "pkg" / "mod.py").write_text(FAKE_MODULE)
    (root / "pkg" / "test_skipped.py").write_text("def f():\n    '''Doc.'''\n    return 1\n")
    return root


@pytest.fixture(scope="module")
def real():
    """Every task on the real standard library, built once."""
    return {name: tasks.build_task(name) for name in tasks.TASKS}


# --------------------------------------------------------------------------- cutting functions


def test_functions_are_cut_into_header_docstring_body_and_defaults(fake_root):
    found = {f.qualname: f for f in tasks.stdlib_functions(fake_root)}
    assert sorted(found) == ["Box.nodoc", "Box.size", "after_form_feed", "plain"]  # `bare` is
    # on one line, and test files are not read
    plain = found["plain"]
    assert plain.module == "pkg/mod.py"
    assert plain.header == "def plain(a, b=1, *, c='x', d=None):"
    assert plain.docstring == '    """Add things up.\n\n    More words.\n    """'
    assert plain.summary == "Add things up."
    assert plain.body == "    total = a + b\n    return total"
    assert plain.defaults == (("b", "1"), ("c", "'x'"), ("d", "None"))
    size = found["Box.size"]  # a method: dedented, decorator left out, two-line header
    assert size.header == 'def size(self,\n         unit="cm"):'
    assert size.body == "    if unit:\n        return 3\n    return 0"
    assert size.defaults == (("unit", '"cm"'),)
    assert found["Box.nodoc"].docstring == "" and found["Box.nodoc"].summary == ""
    late = found["after_form_feed"]
    assert late.header == "def after_form_feed(x=2.5):" and late.body == "    return x"
    for f in found.values():
        ast.parse(f.source)  # the pieces put back together are Python again


def test_tasks_from_a_known_module(fake_root):
    summarize = tasks.summarize_examples(tasks.stdlib_functions(fake_root))
    assert [e["output"] for e in summarize] == ["Add things up.", "Return the size.",
                                                "Still found at the right lines."]
    assert summarize[0]["input"] == ("def plain(a, b=1, *, c='x', d=None):\n"
                                     "    total = a + b\n    return total")
    codegen = tasks.codegen_examples(tasks.stdlib_functions(fake_root))
    assert codegen[0]["input"].endswith('More words.\n    """')
    assert codegen[0]["output"] == "    total = a + b\n    return total"
    qa = {e["meta"]["function"]: e for e in tasks.qa_examples(tasks.stdlib_functions(fake_root))}
    # plain: None is avoided where another default exists, so the question is about b or c
    assert qa["plain"]["output"] in ("1", "'x'")
    assert qa["Box.nodoc"]["output"] == "False"
    assert qa["Box.nodoc"]["instruction"] == (
        "What is the default value of the parameter `flag`?")


# --------------------------------------------------------------------------- splits


def test_module_split_is_a_stable_function_of_the_path():
    assert tasks.module_split("asyncio/base_events.py") == tasks.module_split(
        "asyncio/base_events.py")
    modules = [path for path, _ in stdlib_sources()]
    shares = {s: sum(tasks.module_split(m) == s for m in modules) / len(modules)
              for s in tasks.SPLITS}
    assert 0.05 < shares["val"] < 0.15 and 0.05 < shares["test"] < 0.15


def test_every_split_gets_a_module_when_there_are_three():
    for names in (["a.py", "b.py", "c.py"], [f"m{i}.py" for i in range(7)]):
        assert set(tasks.split_modules(names).values()) == set(tasks.SPLITS)


@pytest.mark.parametrize("name", tasks.TASKS)
def test_no_module_or_function_leaks_across_splits(real, name):
    data = real[name]
    modules = {s: {e["meta"]["module"] for e in data[s]} for s in tasks.SPLITS}
    texts = {s: {e.get("input", e.get("text")) for e in data[s]} for s in tasks.SPLITS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not modules[a] & modules[b], f"{name}: modules in {a} and {b}"
        assert not texts[a] & texts[b], f"{name}: the same input in {a} and {b}"
    assert all(len(data[s]) >= 100 for s in tasks.SPLITS), {s: len(data[s]) for s in data}


@pytest.mark.parametrize("name", ["summarize", "codegen", "qa"])
def test_instruction_examples_are_well_formed(real, name):
    for split in tasks.SPLITS:
        for e in real[name][split]:
            assert set(e) == {"instruction", "input", "output", "meta"}
            assert all(isinstance(e[k], str) and e[k].strip() for k in
                       ("instruction", "input", "output"))
            assert len(e["input"]) + len(e["output"]) <= tasks.DEFAULT_MAX_CHARS
    if name == "codegen":  # the reference body completes the function
        examples = [e for s in tasks.SPLITS for e in real[name][s]]
        assert tasks.parse_rate([e["input"] for e in examples],
                                [e["output"] for e in examples]) == 1.0


def test_summaries_are_the_first_docstring_line_of_the_named_function(real):
    """Checked against the source file directly, with ast, for a sample of the test split."""
    sources = dict(stdlib_sources())
    for e in real["summarize"]["test"][::25]:
        tree = ast.parse(sources[e["meta"]["module"]])
        *classes, name = e["meta"]["function"].split(".")
        scope = tree
        for cls in classes:
            scope = next(n for n in ast.walk(scope) if isinstance(n, ast.ClassDef)
                         and n.name == cls)
        node = next(n for n in ast.walk(scope) if isinstance(n, (ast.FunctionDef,
                                                                  ast.AsyncFunctionDef))
                    and n.name == name)
        assert e["output"] == ast.get_docstring(node).strip().splitlines()[0].strip()
        assert e["output"] not in e["input"] or e["output"] in ast.unparse(node.body[1:])


def test_qa_answers_are_the_asked_parameters_default_in_the_signature(real):
    for e in real["qa"]["test"]:
        name = re.search(r"`(\w+)`", e["instruction"]).group(1)
        arguments = ast.parse(e["input"] + "\n    pass").body[0].args
        defaults = dict(zip([a.arg for a in arguments.args][::-1],
                            [ast.unparse(d) for d in arguments.defaults][::-1], strict=False))
        defaults.update({a.arg: ast.unparse(d) for a, d in
                         zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True) if d})
        assert ast.unparse(ast.parse(e["output"], mode="eval").body) == defaults[name]


def test_classification_examples_cover_every_package_in_every_split(real):
    for split in tasks.SPLITS:
        examples = real["classify"][split]
        assert {e["label"] for e in examples} == set(tasks.CLASSIFY_PACKAGES)
        for e in examples:
            assert e["meta"]["module"].split("/")[0] == e["label"]
            assert 40 <= len(e["text"]) <= tasks.DEFAULT_MAX_CHARS


# --------------------------------------------------------------------------- files, determinism


def test_building_is_deterministic_and_limits_keep_source_order():
    first = tasks.build_task("qa", limits={"train": 50, "test": 20}, seed=3)
    again = tasks.build_task("qa", limits={"train": 50, "test": 20}, seed=3)
    assert first == again
    assert len(first["train"]) == 50 and len(first["test"]) == 20
    full = tasks.build_task("qa")
    positions = [full["train"].index(e) for e in first["train"]]
    assert positions == sorted(positions)
    assert tasks.build_task("qa", limits={"train": 50}, seed=4)["train"] != first["train"]


def test_written_splits_read_back_as_finetuning_data(tmp_path):
    paths = tasks.write_task("classify", tmp_path, limits={"train": 30, "val": 10, "test": 10})
    assert sorted(paths) == sorted(tasks.SPLITS)
    examples, layout = load_examples(paths["train"])
    assert layout == "classification" and len(examples) == 30
    raw = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    assert len(raw) == 10 and all("meta" in r for r in raw)


def test_baselines_and_parse_rate():
    train = [{"output": "None"}, {"output": "None"}, {"output": "0"}]
    assert tasks.baseline_predictions("qa", train, [{}, {}]) == ["None", "None"]
    example = {"input": "def f(x):\n    return x"}
    assert tasks.baseline_predictions("summarize", [], [example]) == ["def f(x):"]
    prompt = 'def f(x):\n    """Double x."""'
    bodies = ["    return 2 * x", "    return (", "pass", "  \n"]  # only the first counts
    assert tasks.parse_rate([prompt] * 4, bodies) == 0.25
    with pytest.raises(ValueError, match="unknown task"):
        tasks.build_task("translate")


def test_the_command_says_how_long_the_longest_example_is_as_read(tmp_path, capsys):
    from minigpt.instruct import format_prompt

    assert tasks.main(["qa", str(tmp_path), "--max-chars", "120"]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for split in tasks.SPLITS
            for line in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
    as_read = max(len(format_prompt(r["instruction"], r["input"])) + len(r["output"])
                  for r in rows)
    assert f"longest example as a model reads it (prompt and answer): {as_read} characters" in (
        printed)
    assert all(len(r["input"]) <= 120 for r in rows)  # what --max-chars counts for qa
