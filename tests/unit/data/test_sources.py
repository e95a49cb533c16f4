"""Every shipped data file maps to the row contract; expected values are re-derived with `json` here."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cispo.data import (
    BadRowError,
    ColumnMap,
    DataConfig,
    DatasetSpec,
    detect_format,
    detect_source,
    heldout_indices,
    load_data,
    load_prompt_dataset,
)
from rewards.code_data import LEETCODE_PRELUDE as LEETCODE_SETUP

DATA = Path(os.environ.get("CISPO_DATA_DIR", Path(__file__).resolve().parents[3] / "data"))


def raw_rows(relative: str) -> list[dict]:
    path = DATA / relative
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
        path = path.with_suffix("")
    else:
        text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load(relative: str, **kwargs) -> list:
    return load_prompt_dataset(DatasetSpec(path=str(DATA / relative), **kwargs)).rows


def test_data_folder_is_there():
    assert (DATA / "README.md").is_file(), f"data not found at {DATA} (set CISPO_DATA_DIR)"


@pytest.mark.parametrize(
    "relative, source",
    [
        ("eval/aime2024.jsonl", "aime"),
        ("eval/aime2025.jsonl", "aime"),
        ("eval/math500_test.jsonl", "math500"),
        ("eval/amc23_test.jsonl", "amc"),
        ("eval/gsm8k_test.jsonl", "gsm8k"),
        ("train/gsm8k_train.jsonl.gz", "gsm8k"),
        ("train/math_train_rllm.json.gz", "math"),
        ("train/deepmath_5k_roll.jsonl.gz", "deepmath"),
        ("code/HumanEval.jsonl.gz", "humaneval"),
        ("code/prime_new_mbpp.json", "mbpp"),
        ("code/rllm_leetcode_train.json.gz", "leetcode"),
        ("code/rllm_leetcode_test.json", "leetcode"),
        ("code/rllm_codeforces_test.json", "codeforces"),
        ("eval/math_grader_cases.jsonl", None),
    ],
)
def test_detect_source_from_file_name(relative, source):
    assert detect_source(relative) == source


def test_detect_format():
    assert detect_format("a/HumanEval.jsonl.gz") == "jsonl"
    assert detect_format("x.json") == "json"
    assert detect_format("x.PARQUET") == "parquet"
    with pytest.raises(ValueError, match="format"):
        detect_format("x.csv")


@pytest.mark.parametrize("year", [2024, 2025])
def test_aime(year):
    raw = raw_rows(f"eval/aime{year}.jsonl")
    rows = load(f"eval/aime{year}.jsonl")
    assert len(rows) == len(raw) == 30
    assert [r.ground_truth for r in rows] == [str(int(x["answer"])) for x in raw]
    assert [r.id for r in rows] == [x["id"] for x in raw]
    assert [r.prompt for r in rows] == [x["problem"] for x in raw]
    assert {r.reward_kind for r in rows} == {"aime"}
    assert {r.data_source for r in rows} == {"aime"}
    assert rows[0].ground_truth == ("204" if year == 2024 else "70")


def test_math500_and_amc():
    raw = raw_rows("eval/math500_test.jsonl")
    rows = load("eval/math500_test.jsonl")
    assert [(r.id, r.ground_truth, r.prompt) for r in rows] == [
        (x["unique_id"], x["answer"].strip(), x["problem"]) for x in raw
    ]
    assert rows[0].ground_truth == "\\left( 3, \\frac{\\pi}{2} \\right)"
    raw = raw_rows("eval/amc23_test.jsonl")
    rows = load("eval/amc23_test.jsonl")
    assert len(rows) == 40
    assert [r.ground_truth for r in rows] == ["%d" % x["answer"] for x in raw]  # whole-number floats
    assert rows[0].ground_truth == "27" and rows[15].ground_truth == "-1"
    assert {r.reward_kind for r in rows} == {"math"}


@pytest.mark.parametrize("relative, count", [("eval/gsm8k_test.jsonl", 1319), ("train/gsm8k_train.jsonl.gz", 7473)])
def test_gsm8k_answer_after_hashes(relative, count):
    raw = raw_rows(relative)
    rows = load(relative)
    assert len(rows) == count
    expected = [x["answer"].split("####")[-1].strip().replace(",", "") for x in raw]
    assert [r.ground_truth for r in rows] == expected
    assert all(r.ground_truth.lstrip("-").isdigit() for r in rows)
    assert [r.prompt for r in rows] == [x["question"] for x in raw]
    assert len({r.id for r in rows}) == count
    if relative.startswith("eval"):
        assert rows[0].ground_truth == "18" and rows[0].id == "gsm8k-0"


def test_math_train_bad_rows_error_then_skip():
    raw = raw_rows("train/math_train_rllm.json.gz")
    bad = [i for i, x in enumerate(raw) if x["answer"] is None or not str(x["answer"]).strip()]
    assert bad == [886, 1009, 5328, 5330]  # the README says 2; there are 2 nulls and 2 empty strings
    with pytest.raises(BadRowError, match=r"math_train_rllm\.json\.gz: row 886 \(0-based\), field 'answer'"):
        load("train/math_train_rllm.json.gz")
    dataset = load_prompt_dataset(DatasetSpec(path=str(DATA / "train/math_train_rllm.json.gz"), on_bad_row="skip"))
    assert dataset.num_skipped == 4 and [b.row for b in dataset.skipped] == bad
    assert {b.field for b in dataset.skipped} == {"answer"}
    assert len(dataset) == len(raw) - 4 == 7470
    kept = [x for i, x in enumerate(raw) if i not in bad]
    assert [r.ground_truth for r in dataset.rows] == [x["answer"].strip() for x in kept]
    assert dataset.rows[0].id == "math-0" and dataset.rows[886].id == "math-887"  # ids keep file row numbers


def test_deepmath():
    raw = raw_rows("train/deepmath_5k_roll.jsonl.gz")
    rows = load("train/deepmath_5k_roll.jsonl.gz", name="deepmath_5k")
    assert [(r.id, r.prompt, r.ground_truth) for r in rows] == [
        (x["id"], x["prompt"], x["ground_truth"].strip()) for x in raw
    ]
    assert {r.data_source for r in rows} == {"deepmath_5k"}


def test_humaneval_mbpp_codeforces_ground_truth():
    raw = raw_rows("code/HumanEval.jsonl.gz")
    rows = load("code/HumanEval.jsonl.gz")
    assert len(rows) == 164
    assert [{k: v for k, v in r.ground_truth.items() if k != "test_setup"} for r in rows] == [
        {"check": x["test"], "entry_point": x["entry_point"]} for x in raw]
    # The prompt's helper functions travel as trusted setup, without the function the model writes.
    with_helpers = {x["task_id"]: r.ground_truth["test_setup"] for r, x in zip(rows, raw)
                    if "def " in r.ground_truth.get("test_setup", "")}
    assert {"HumanEval/32", "HumanEval/38", "HumanEval/50"} <= set(with_helpers)
    assert "def poly(" in with_helpers["HumanEval/32"] and "def find_zero(" not in with_helpers["HumanEval/32"]
    assert "def encode_cyclic(" in with_helpers["HumanEval/38"] and "def decode_cyclic(" not in with_helpers["HumanEval/38"]
    assert all(x["prompt"] in r.user_message and r.reward_kind == "code" for r, x in zip(rows, raw))
    assert "def has_close_elements(" in rows[0].user_message and "```python" in rows[0].user_message

    raw = raw_rows("code/prime_new_mbpp.json")
    rows = load("code/prime_new_mbpp.json")
    assert [r.ground_truth for r in rows] == [
        {"asserts": x["test_list"], "setup": "\n".join(x["test_imports"])} for x in raw
    ]
    assert [r.id for r in rows] == [str(x["task_id"]) for x in raw]
    assert rows[0].prompt == raw[0]["prompt"] + "\n" + raw[0]["test_list"][0]

    raw = raw_rows("code/rllm_codeforces_test.json")
    rows = load("code/rllm_codeforces_test.json")
    assert [r.ground_truth for r in rows] == [{"io": x["tests"]} for x in raw]
    assert rows[0].ground_truth["io"][0]["output"].startswith("1 9\n4 8")
    assert "standard input" in rows[0].user_message


def test_leetcode_entry_point_and_check():
    raw = raw_rows("code/rllm_leetcode_test.json")
    rows = load("code/rllm_leetcode_test.json")
    assert len(rows) == 200
    first = rows[0].ground_truth
    assert first["entry_point"] == "Solution().minOperations"
    assert first["check"].startswith("def check(candidate):") and "check(Solution()" not in first["check"]
    assert first["setup"] == LEETCODE_SETUP
    for row, x in zip(rows, raw):  # check + the call rebuilds the original test exactly
        call = f"check({row.ground_truth['entry_point']})"
        assert x["tests"]["functional"].rstrip().endswith(call)
        assert x["tests"]["functional"].split(call)[0].rstrip() == row.ground_truth["check"].rstrip()
    assert rows[0].prompt == raw[0]["problem"] and rows[0].id == "leetcode-0"


def _program(solution: str, truth: dict) -> str:
    """How a code reward runs a candidate against these ground truths (docs/data.md)."""
    if "asserts" in truth:
        return truth["setup"] + "\n" + solution + "\n" + "\n".join(truth["asserts"]) + "\n"
    return truth.get("setup", "") + "\n" + solution + "\n" + truth["check"] + f"\ncheck({truth['entry_point']})\n"


def _passes(program: str) -> bool:
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=30)
    return result.returncode == 0


def test_reference_solutions_pass_through_the_mapping():
    """A few reference solutions (plain, linked list, tree) pass; a wrong one fails."""
    cases = []
    he_raw, he = raw_rows("code/HumanEval.jsonl.gz"), load("code/HumanEval.jsonl.gz")
    cases += [(he_raw[i]["prompt"] + he_raw[i]["canonical_solution"], he[i].ground_truth) for i in (0, 32)]
    mb_raw, mb = raw_rows("code/prime_new_mbpp.json"), load("code/prime_new_mbpp.json")
    with_import = next(i for i, x in enumerate(mb_raw) if x["test_imports"])
    cases += [(mb_raw[i]["code"], mb[i].ground_truth) for i in (0, with_import)]
    lc_raw, lc = raw_rows("code/rllm_leetcode_test.json"), load("code/rllm_leetcode_test.json")
    cases.append((lc_raw[0]["solutions"], lc[0].ground_truth))
    tr_raw, tr = raw_rows("code/rllm_leetcode_train.json.gz"), load("code/rllm_leetcode_train.json.gz")
    linked = next(i for i, x in enumerate(tr_raw) if "is_same_list(" in x["tests"]["functional"])
    tree = next(i for i, x in enumerate(tr_raw) if "is_same_tree(" in x["tests"]["functional"])
    cases += [(tr_raw[i]["solutions"], tr[i].ground_truth) for i in (linked, tree)]
    for solution, truth in cases:
        assert _passes(_program(solution, truth)), truth
    wrong = lc_raw[0]["solutions"].replace("return n - i", "return n - i + 1")
    assert wrong != lc_raw[0]["solutions"]
    assert not _passes(_program(wrong, lc[0].ground_truth))


def test_reward_kind_template_limit_and_name_overrides():
    rows = load("eval/aime2024.jsonl", reward_kind="math", limit=5, name="aime24", template="Q: {prompt} A:")
    assert len(rows) == 5 and {r.reward_kind for r in rows} == {"math"}
    assert {r.data_source for r in rows} == {"aime24"}
    assert rows[0].user_message == "Q: " + raw_rows("eval/aime2024.jsonl")[0]["problem"] + " A:"


def test_heldout_split_is_disjoint_and_complete():
    spec = dict(path=str(DATA / "eval/gsm8k_test.jsonl"), heldout_fraction=0.25, split_seed=3)
    train = load_prompt_dataset(DatasetSpec(split="train", **spec)).rows
    held = load_prompt_dataset(DatasetSpec(split="heldout", **spec)).rows
    assert len(held) == round(1319 * 0.25) == 330 and len(train) == 1319 - 330
    assert not {r.id for r in train} & {r.id for r in held}
    assert {r.id for r in train} | {r.id for r in held} == {f"gsm8k-{i}" for i in range(1319)}
    assert {f"gsm8k-{i}" for i in heldout_indices(1319, 0.25, 3)} == {r.id for r in held}
    other_seed = load_prompt_dataset(DatasetSpec(split="heldout", **{**spec, "split_seed": 4})).rows
    assert {r.id for r in other_seed} != {r.id for r in held}
    with pytest.raises(ValueError, match="heldout_fraction"):
        DatasetSpec(path="x.jsonl", split="train")


def test_generic_columns_jsonl_and_parquet(tmp_path):
    records = [
        {"q": "1+1?", "a": 2, "uid": "p0"},
        {"q": "Half of 5?", "a": 2.5, "uid": "p1"},
        {"q": "x?", "a": "\\frac{1}{2}", "uid": "p2"},
    ]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    columns = ColumnMap(prompt="q", ground_truth="a", id="uid")
    rows = load_prompt_dataset(DatasetSpec(path=str(jsonl), columns=columns)).rows
    assert [(r.prompt, r.ground_truth, r.id, r.reward_kind, r.data_source) for r in rows] == [
        ("1+1?", "2", "p0", "math", "generic"),
        ("Half of 5?", "2.5", "p1", "math", "generic"),
        ("x?", "\\frac{1}{2}", "p2", "math", "generic"),
    ]
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "mine.parquet"
    code = [{"prompt": "Write f", "tests": json.dumps({"asserts": ["assert f() == 1"], "setup": ""})}]
    pq.write_table(pa.Table.from_pylist(code), parquet)
    spec = DatasetSpec(path=str(parquet), columns=ColumnMap(prompt="prompt", ground_truth="tests"), reward_kind="code")
    rows = load_prompt_dataset(spec).rows
    assert rows[0].ground_truth == {"asserts": ["assert f() == 1"], "setup": ""}
    assert rows[0].id == "generic-0" and rows[0].reward_kind == "code"


def test_malformed_rows_name_file_row_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [{"q": "ok", "a": "1"}, {"q": "no answer"}, {"q": 5, "a": "2"}, {"q": "dup", "a": "3", "id": "x"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    columns = ColumnMap(prompt="q", ground_truth="a")
    with pytest.raises(BadRowError) as info:
        load_prompt_dataset(DatasetSpec(path=str(path), columns=columns))
    assert (info.value.path, info.value.row, info.value.field) == (str(path), 1, "a")
    assert "bad.jsonl: row 1 (0-based), field 'a': missing or null" in str(info.value)
    dataset = load_prompt_dataset(DatasetSpec(path=str(path), columns=columns, on_bad_row="skip"))
    assert [(b.row, b.field) for b in dataset.skipped] == [(1, "a"), (2, "q")]
    assert [r.prompt for r in dataset.rows] == ["ok", "dup"]

    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"q": "a", "a": "1", "id": "x"}\n{"q": "b", "a": "2", "id": "x"}\n')
    with pytest.raises(BadRowError, match="row 1 .*'id': duplicate id 'x' \\(first at row 0\\)"):
        load_prompt_dataset(DatasetSpec(path=str(dup), columns=ColumnMap(prompt="q", ground_truth="a", id="id")))


def test_broken_json_line_is_reported(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"q": "a", "a": "1"}\n{"q": "b", "a": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl: row 1 \(0-based; line 2\) is not valid JSON"):
        load_prompt_dataset(DatasetSpec(path=str(path), columns=ColumnMap(prompt="q", ground_truth="a")))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="on_bad_row='drop'"):
        DatasetSpec(path="x.jsonl", on_bad_row="drop")
    with pytest.raises(ValueError, match="reward_kind='text'"):
        DatasetSpec(path="x.jsonl", reward_kind="text")
    with pytest.raises(ValueError, match="template='Q:'"):
        DatasetSpec(path="x.jsonl", template="Q:")
    with pytest.raises(ValueError, match="path=None"):
        DatasetSpec(source="aime")
    with pytest.raises(ValueError, match="source='nope'"):
        load_prompt_dataset(DatasetSpec(path=str(DATA / "eval/aime2024.jsonl"), source="nope"))
    with pytest.raises(ValueError, match="cannot tell the data source"):
        load_prompt_dataset(DatasetSpec(path=str(DATA / "eval/math_grader_cases.jsonl")))
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        load_prompt_dataset(DatasetSpec(path="/nonexistent/nothere.jsonl", source="gsm8k"))


def test_load_data_mixture_and_eval_names():
    cfg = DataConfig(
        train=[
            DatasetSpec(path=str(DATA / "eval/aime2024.jsonl")),
            DatasetSpec(path=str(DATA / "eval/amc23_test.jsonl"), limit=10),
        ],
        eval={"aime2025": DatasetSpec(path=str(DATA / "eval/aime2025.jsonl"))},
    )
    data = load_data(cfg)
    assert len(data.train) == 40 and data.train[30].data_source == "amc"
    assert data.eval["aime2025"].rows[0].data_source == "aime2025"
    assert data.summary()["train"]["amc"] == {"rows": 10, "skipped": 0}
    clash = DataConfig(train=[DatasetSpec(path=str(DATA / "eval/aime2024.jsonl"))] * 2, eval={})
    with pytest.raises(ValueError, match="appears twice"):
        load_data(clash)


def test_relative_paths_resolve_against_the_checkout_from_any_folder(tmp_path, monkeypatch):
    """The presets name `data/...`: they must work when the run starts outside the checkout."""
    from cispo.data.io import PROJECT_ROOT, resolve_data_path

    monkeypatch.chdir(tmp_path)
    assert resolve_data_path("data/eval/aime2024.jsonl") == PROJECT_ROOT / "data/eval/aime2024.jsonl"
    assert len(load_prompt_dataset(DatasetSpec(path="data/eval/aime2024.jsonl")).rows) == 30
    # A file of the user's in the working folder wins over the shipped one of the same name.
    own = tmp_path / "data" / "eval" / "aime2024.jsonl"
    own.parent.mkdir(parents=True)
    own.write_text(json.dumps({"id": "x-1", "problem": "p", "answer": 7}) + "\n")
    assert len(load_prompt_dataset(DatasetSpec(path="data/eval/aime2024.jsonl", source="aime")).rows) == 1
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl: data file not found \(looked for .*nope\.jsonl or "):
        resolve_data_path("nope.jsonl")


def test_a_hub_dataset_id_or_dataset_folder_loads_through_datasets(tmp_path):
    """`hub:` goes to `datasets.load_dataset`; a local dataset folder exercises the same call offline."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1), "uid": f"q{i}"} for i in range(5)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DatasetSpec(hub=str(folder), hub_split="train", columns=ColumnMap(prompt="question", ground_truth="answer", id="uid"))
    loaded = load_prompt_dataset(spec).rows
    assert [(r.prompt, r.ground_truth, r.id) for r in loaded] == [(r["question"], r["answer"], r["uid"]) for r in rows]
    with pytest.raises(ValueError, match="expected exactly one of them"):
        DatasetSpec(path="data/eval/aime2024.jsonl", hub="org/name")
    with pytest.raises(ValueError, match=r"hub dataset '.*missing' \(split 'train'\) could not be loaded"):
        load_prompt_dataset(DatasetSpec(hub=str(tmp_path / "missing"), columns=ColumnMap(prompt="q", ground_truth="a")))
