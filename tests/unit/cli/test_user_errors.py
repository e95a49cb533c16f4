"""A user's mistake ends in one line naming the thing and what was expected, exit code 2, no
traceback (the data and the model are read before Ray starts): a missing data file, a malformed row, a
missing model, an interpolation that cannot resolve; our own bugs still end in a traceback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cispo.cli.user_errors import EXIT_USER_ERROR, one_line_errors
from cispo.data.types import BadRowError, DataFileNotFoundError

ROOT = Path(__file__).resolve().parents[3]
CLI_TIMEOUT_S = 120


def train_cli(tmp_path: Path, *overrides: str) -> tuple[int, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "cispo.train", "experiment=quick", f"run_dir={tmp_path / 'run'}",
                             *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return result.returncode, [line for line in output.splitlines() if "ERROR" in line or "error" in line]


def own_file(path: Path) -> tuple[str, ...]:
    """The user's own training file (the quick preset's held-out set is drawn from its arithmetic task)."""
    return f"data.train=[{{path:{path},columns:{{prompt:q,ground_truth:a}}}}]", "~data.eval.heldout", "eval.sets=[]"


def test_an_unresolvable_interpolation_is_one_line(tmp_path):
    code, errors = train_cli(tmp_path, own_file(tmp_path / "x.jsonl")[0])  # held-out set still points at data.train
    assert code == EXIT_USER_ERROR and len(errors) == 1, errors
    assert "invalid configuration" in errors[0] and "data.train[0].arithmetic" in errors[0]


def test_a_missing_data_file_is_one_line(tmp_path):
    code, errors = train_cli(tmp_path, *own_file(tmp_path / "missing.jsonl"))
    assert code == EXIT_USER_ERROR and len(errors) == 1, errors
    assert "missing.jsonl: data file not found" in errors[0]


def test_a_malformed_row_names_the_file_and_the_row(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"q": "1+1", "a": "2"}\n{"q": "2+2", "a": \n{"q": "3+3", "a": "6"}\n')
    code, errors = train_cli(tmp_path, *own_file(data))
    assert code == EXIT_USER_ERROR and len(errors) == 1, errors
    assert "mine.jsonl: row 1 (0-based; line 2) is not valid JSON" in errors[0]


def test_a_missing_model_is_one_line(tmp_path):
    code, errors = train_cli(tmp_path, "model=local", f"model.path={tmp_path / 'no_such_model'}")
    assert code == EXIT_USER_ERROR and len(errors) == 1, errors
    assert "no_such_model" in errors[0] and "neither a built-in name" in errors[0]


def test_only_user_errors_become_one_line(caplog):
    log = logging.getLogger("test-user-errors")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stop:
        with one_line_errors(log):
            raise BadRowError("x.jsonl", 3, "answer", "missing or null")
    assert stop.value.code == EXIT_USER_ERROR and caplog.records[-1].getMessage().startswith("x.jsonl: row 3")
    with pytest.raises(SystemExit):
        with one_line_errors(log):
            raise DataFileNotFoundError("y.jsonl: data file not found")
    with pytest.raises(KeyError):  # a bug is not the user's mistake: it keeps its traceback
        with one_line_errors(log):
            raise KeyError("a bug")
