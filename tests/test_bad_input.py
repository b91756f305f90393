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
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_input_cases import CASES, NO_CUDA_CASE, NO_OPTUNA_CASE, NO_VLLM_CASE, matches, write_files
from helpers import compose_config

from sbr_bench.cli.launchers import installed, missing_plugin
from sbr_bench.cli.precheck import problem
from sbr_bench.job import run_job

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


def not_applicable(case) -> str | None:
    """Why ``case`` cannot fail here (what it lacks is there), or None."""
    if case == NO_CUDA_CASE and torch.cuda.is_available():
        return "this machine has CUDA"
    if case == NO_OPTUNA_CASE and installed("hydra_plugins.hydra_optuna_sweeper"):
        return "the optuna extra is installed"
    if case == NO_VLLM_CASE and installed("vllm"):
        return "the vllm extra is installed"
    return None


def skip_where_not_applicable(case):
    if reason := not_applicable(case):
        pytest.skip(reason)


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


@pytest.fixture(scope="module")
def as_a_user(files, tmp_path_factory) -> dict[str, tuple[int, str, Path]]:
    """Case name -> (exit code, stderr, job folder) of ``sbr-bench <args>`` in a subprocess.

    The commands are independent and spend their seconds starting Python and importing torch, so
    they all start at once instead of one after another.
    """
    root = tmp_path_factory.mktemp("as_a_user")
    env = {**os.environ, "SBR_BENCH_CACHE": str(root / "cache"), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    running = {}
    for i, case in enumerate(USER_CASES):
        if not_applicable(case):
            continue
        name, args, _ = case
        job = root / str(i) / "job"
        job.parent.mkdir()
        args = [a.replace("{files}", str(files)) for a in args]
        command = [sys.executable, "-m", "sbr_bench.cli.run", *args, f"hydra.run.dir={job}", f"hydra.sweep.dir={job}"]
        with (job.parent / "stderr").open("w") as stderr:  # the child keeps its own copy of the handle
            proc = subprocess.Popen(command, cwd=job.parent, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        running[name] = (proc, job)
    results = {}
    for name, (proc, job) in running.items():
        proc.wait(timeout=600)
        results[name] = (proc.returncode, (job.parent / "stderr").read_text(), job)
    return results


@pytest.mark.parametrize(("name", "args", "expected"), USER_CASES, ids=[c[0] for c in USER_CASES])
def test_as_a_user_runs_it_exit_code_2_and_nothing_else_on_stderr(name, args, expected, files, as_a_user):
    skip_where_not_applicable((name, args, expected))
    returncode, stderr, job = as_a_user[name]
    lines = stderr.strip().splitlines()
    assert returncode == 2, stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert matches(lines[0], expected.replace("{files}", str(files))), lines[0]
    log = job / "sbr-bench.log"
    assert not log.is_file() or "model: loading" not in log.read_text()  # no model was loaded


def test_every_selected_case_exists():
    assert len(USER_CASES) == len(AS_A_USER)  # a renamed case would drop out of the selection unseen
