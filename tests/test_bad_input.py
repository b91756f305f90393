"""Every bad value fails in seconds with one line: exit code 2, no traceback, no model loaded.

The cases (tests/bad_input_cases.py) cover wrong types, zeros, negatives, values out of range, empty
lists, missing, empty and broken data files, model paths that do not exist, an absent plugin extra,
unknown options and keys, a bad value in a sweep, and the checks made against the data. Every case
runs in this process through the command line's own steps (the pre-check, then the job as Hydra
starts it); a selection also runs as a user runs it, ``sbr-bench`` in a subprocess. The time each
case takes as a command: ``python benchmarks/bad_input.py``.
"""

from __future__ import annotations

import logging

import pytest
import torch
from bad_input_cases import CASES, NO_CUDA_CASE, NO_OPTUNA_CASE, NO_VLLM_CASE, matches, write_files
from conftest import compose_config
from test_cli import sbr_bench

from sbr_bench.job import run_job
from sbr_bench.launchers import installed, missing_plugin
from sbr_bench.precheck import problem

ALL = [*CASES, NO_CUDA_CASE, NO_OPTUNA_CASE, NO_VLLM_CASE]
# One case of each way a command stops: the pre-check's settings schema, a plug-in's signature, a sweep
# job, an absent extra, a data file read by the job, a check against the data, a rule in a constructor.
AS_A_USER = {
    "wrong type: a learning rate that is not a number",
    "negative: SBR's lambda",
    "a bad value in the last job of a sweep",
    "a sweeper whose extra is not installed",
    "a file that is not JSON",
    "more samples than the attack pool holds",
    "a rule across two keys, in a constructor",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_files")
    write_files(folder)
    return folder


def skip_where_not_applicable(case):
    if case == NO_CUDA_CASE and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if case == NO_OPTUNA_CASE and installed("hydra_plugins.hydra_optuna_sweeper"):
        pytest.skip("the optuna extra is installed")
    if case == NO_VLLM_CASE and installed("vllm"):
        pytest.skip("the vllm extra is installed")


@pytest.mark.parametrize(("name", "args", "expected"), ALL, ids=[c[0] for c in ALL])
def test_bad_input_is_one_line_before_any_model_loads(name, args, expected, files, tmp_path, capsys, caplog):
    skip_where_not_applicable((name, args, expected))
    args = [a.replace("{files}", str(files)) for a in args]
    expected = expected.replace("{files}", str(files))
    found = missing_plugin(args) or problem(args)  # what sbr-bench checks before Hydra starts
    if found is not None:
        assert matches(f"sbr-bench: error: {found}", expected), found
        return
    # Past the pre-check: the job as Hydra starts it (the checks against the data, before the model).
    cfg = compose_config(args, tmp_path / "job", tmp_path / "cache", keep_hydra=False)
    with caplog.at_level(logging.INFO, logger="sbr_bench"), pytest.raises(SystemExit) as stop:
        run_job(cfg)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1, lines
    assert matches(lines[0], expected), lines[0]
    assert "model: loading" not in caplog.text  # no model was loaded


USER_CASES = [c for c in ALL if c[0] in AS_A_USER]


@pytest.mark.parametrize(("name", "args", "expected"), USER_CASES, ids=[c[0] for c in USER_CASES])
def test_as_a_user_runs_it_exit_code_2_and_nothing_else_on_stderr(name, args, expected, files, tmp_path):
    skip_where_not_applicable((name, args, expected))
    job = tmp_path / "job"
    args = [a.replace("{files}", str(files)) for a in args]
    result = sbr_bench([*args, f"hydra.run.dir={job}", f"hydra.sweep.dir={job}"], tmp_path, tmp_path / "cache")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert matches(lines[0], expected.replace("{files}", str(files))), lines[0]
    log = job / "sbr-bench.log"
    assert not log.is_file() or "model: loading" not in log.read_text()  # no model was loaded


def test_every_selected_case_exists():
    assert len(USER_CASES) == len(AS_A_USER)  # a renamed case would drop out of the selection unseen
