"""Sweeps under the parallel Hydra launchers (joblib, Ray, submitit) give the basic launcher's results.

The same toy sweep runs under ``hydra/launcher=local_parallel`` (joblib, 2 jobs at once, fresh
cache: the two first jobs need the same alignment at the same time) and under the basic launcher;
every number of every job must be equal. Torch's float results depend on its thread count (the
order of parallel reductions), so the basic launcher runs with the threads a joblib worker gets:
loky caps each worker at ``cpu_count() // n_jobs`` threads. With different thread counts the
diagnostics differ in the 7th digit (measured: ``diag/anchor_distance_final`` 3.2391760e-4 vs
3.2391897e-4), which is why the comparison is exact only at equal thread counts.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Two defenses x a working and a failing attack: max_length=4 passes every check made before the model loads
# (it is a positive length) and fails once the attack tokenizes its data, after the alignment.
GRID = ["model=toy", "debug=fast", "align.max_steps=20", "defense=none,sbr", "attack.max_length=256,4"]
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
FAILING = {"1", "3"}  # the jobs with attack.max_length=4 (Hydra's grid order: defense outer, length inner)


def run_sweep(args: list[str], cache: Path, threads: int | None = None, timeout: int = 600):
    """``sbr-bench -m <args>`` in a subprocess; ``threads`` sets OMP_NUM_THREADS, None leaves it to the launcher."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(SBR_BENCH_CACHE=str(cache), WANDB_MODE="offline", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run(
        [sys.executable, "-m", "sbr_bench.cli.run", "-m", *args],
        cwd=cache.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def worker_threads(n_jobs: int) -> int:
    """The threads loky gives each of ``n_jobs`` workers (joblib's ``_prepare_worker_env``)."""
    from joblib import cpu_count

    return max(cpu_count() // n_jobs, 1)


def jobs(sweep: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(sweep.iterdir()) if (p / ".hydra").is_dir()}


def numbers(job: Path) -> dict:
    """metrics.json without timings and without align/cached (which job trains a shared alignment is a race)."""
    metrics = json.loads((job / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.startswith("time/") and k != "align/cached"}


def status(job: Path) -> str:
    return json.loads((job / "status.json").read_text())["status"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The grid under joblib (2 jobs at once, empty cache), then under the basic launcher (same cache)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[joblib]'")
    root = tmp_path_factory.mktemp("launchers")
    cache = root / "cache"
    parallel = run_sweep(
        [*GRID, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={root / 'joblib'}"], cache
    )
    basic = run_sweep([*GRID, f"hydra.sweep.dir={root / 'basic'}"], cache, threads=worker_threads(2))
    return {"root": root, "cache": cache, "joblib": parallel, "basic": basic}


def test_joblib_sweep_gives_exactly_the_basic_launchers_numbers(sweeps):
    parallel, basic = jobs(sweeps["root"] / "joblib"), jobs(sweeps["root"] / "basic")
    assert list(parallel) == list(basic) == ["0", "1", "2", "3"]
    for name in ("0", "2"):
        expected = numbers(basic[name])
        assert {"align/harmful_score", "eval/harmful_score", "eval/finetune_acc", "eval/over_refusal"} <= set(expected)
        assert numbers(parallel[name]) == expected, f"job {name}"


def test_failed_jobs_are_recorded_and_the_parallel_sweep_exits_1_with_its_table(sweeps):
    result, sweep = sweeps["joblib"], sweeps["root"] / "joblib"
    assert result.returncode == 1, result.stderr[-3000:]
    for name, job in jobs(sweep).items():
        assert status(job) == ("error" if name in FAILING else "ok")
    assert "raise the stage's max_length" in json.loads((sweep / "1" / "status.json").read_text())["error"]
    assert "2 of 4 jobs did not finish (job 1, 3)" in result.stderr
    report = (sweep / "report.md").read_text()  # written by ReportCallback in the launching process
    jobs_table = report.split("## Jobs\n", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in jobs_table.splitlines() if line.startswith("| ")}
    assert rows["0"].endswith("| ok |") and "raise the stage's max_length" in rows["3"]
    assert sweeps["basic"].returncode == 1  # the same grid under the basic launcher fails the same way


def test_parallel_jobs_sharing_an_alignment_train_it_once(sweeps):
    """All four jobs share one alignment; jobs 0 and 1 start together on an empty cache."""
    logs = [(job / "sbr-bench.log").read_text() for job in jobs(sweeps["root"] / "joblib").values()]
    assert sum("alignment: training on" in log for log in logs) == 1
    assert sum("alignment: reusing" in log for log in logs) == 3
    entries = [p for p in (sweeps["cache"] / "aligned").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(entries) == 1


def test_each_parallel_job_has_its_own_wandb_run(sweeps):
    run_ids = set()
    for job in jobs(sweeps["root"] / "joblib").values():
        (run,) = (job / "wandb").glob("offline-run-*")  # offline (WANDB_MODE), exactly one per job
        run_ids.add(run.name.rsplit("-", 1)[-1])
    assert len(run_ids) == 4


def compose_launcher(option: str, monkeypatch, **env):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sbr_bench import CONF_DIR

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=toy", f"hydra/launcher={option}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def test_slurm_option_is_the_submitit_slurm_launcher_with_one_gpu_per_job(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    from hydra.utils import instantiate

    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    cfg = compose_launcher("slurm", monkeypatch, SBATCH_PARTITION="gpu-long")
    launcher = instantiate(cfg.hydra.launcher)
    # By name: Hydra's plugin scan loads the plugin's modules a second time, so the class objects differ.
    assert f"{type(launcher).__module__}.{type(launcher).__name__}" == SLURM_LAUNCHER
    params = launcher.params
    assert (params["gpus_per_node"], params["tasks_per_node"], params["nodes"]) == (1, 1, 1)
    assert params["partition"] == "gpu-long" and params["account"] is None  # from sbatch's variables, else unset
    assert params["array_parallelism"] == 8 and params["max_num_timeout"] == 0
    assert params["submitit_folder"] == f"{cfg.hydra.sweep.dir}/.submitit/%j"


def test_slurm_option_composes_on_the_command_line(tmp_path):
    """``--cfg hydra`` as a user would check it before submitting (no SLURM needed)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    result = subprocess.run(
        [sys.executable, "-m", "sbr_bench.cli.run", "model=toy", "hydra/launcher=slurm", "--cfg", "hydra"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    launcher = yaml.safe_load(result.stdout)["hydra"]["launcher"]
    assert launcher["_target_"] == SLURM_LAUNCHER
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"], launcher["mem_gb"]) == (1, 1, 64)
    # Resolved when the sweep starts (hydra's view alone cannot resolve it; the test above resolves it).
    assert launcher["partition"] == "${oc.env:SBATCH_PARTITION,null}"


def test_a_launcher_whose_plugin_is_missing_names_the_extra(monkeypatch):
    from sbr_bench.cli import launchers

    monkeypatch.setattr(launchers, "installed", lambda package: package != "hydra_plugins.hydra_ray_launcher")
    assert launchers.missing_plugin(["-m", "hydra/launcher=joblib"]) is None
    assert launchers.missing_plugin(["hydra/launcher=ray_cluster"]) == (
        "hydra/launcher=ray_cluster needs the ray extra; install it with: "
        "pip install -e '.[ray]' (in the repository) or pip install 'sbr-bench[ray]'"
    )


def test_a_mistyped_launcher_is_one_line_listing_the_plugins_options(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[joblib]'")
    result = subprocess.run(
        [sys.executable, "-m", "sbr_bench.cli.run", "-m", "model=toy", "hydra/launcher=jobli"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("sbr-bench: error: hydra/launcher=jobli: no such option; valid options: basic, joblib,")
    assert "local_parallel" in line and "slurm" in line


def test_a_job_outside_the_main_thread_runs_without_the_sigterm_handler(make_cfg, monkeypatch, tmp_path):
    """joblib's threading backend runs jobs in threads, where Python forbids signal handlers: no crash."""
    from sbr_bench import job, pipeline

    seen = {}

    def fake_run(cfg):  # the pipeline itself is tested elsewhere; here only what run_job does around it
        seen[threading.current_thread().name] = signal.getsignal(signal.SIGTERM)
        return {"eval/harmful_score": 12.5}

    monkeypatch.setattr(pipeline, "run", fake_run)
    before = signal.getsignal(signal.SIGTERM)
    results = {}
    cfg_main = make_cfg(["model=toy", "logger=none"], output_dir=tmp_path / "main")
    results["main"] = job.run_job(cfg_main)
    cfg_thread = make_cfg(["model=toy", "logger=none"], output_dir=tmp_path / "thread")
    worker = threading.Thread(target=lambda: results.update(thread=job.run_job(cfg_thread)), name="worker")
    worker.start()
    worker.join(timeout=60)
    assert results == {"main": 12.5, "thread": 12.5}
    assert seen["MainThread"] is job._on_sigterm and seen["worker"] is before  # watched only in the main thread
    assert signal.getsignal(signal.SIGTERM) is before  # restored after the job
    assert status(tmp_path / "main") == status(tmp_path / "thread") == "ok"


class _SignalsOnDeletion:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # Python swallows what a finalizer raises (our Interrupted)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed Interrupted
@pytest.mark.parametrize("where", ["step", "finalizer"])
def test_a_sigterm_inside_lightnings_fit_is_recorded_as_interrupted(where, make_cfg, monkeypatch, tmp_path):
    """A SIGTERM inside ``fit`` is an interrupted job (status.json, exit 143) wherever it lands.

    ``finalizer``: seen in a killed sweep, the signal landed in Lightning's ``Profiler.__del__``, which
    swallowed our ``Interrupted``; Lightning then ended ``fit`` with its own bare SystemExit (exit code 0).
    """
    import pytorch_lightning as pl
    import torch

    from sbr_bench import job, pipeline

    class SignalsItself(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                if where == "step":
                    os.kill(os.getpid(), signal.SIGTERM)  # as a cluster's time limit or `kill` would
                else:
                    _SignalsOnDeletion()  # deleted at once: the signal arrives inside its __del__
            return self.layer(batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fake_run(cfg):
        data = torch.utils.data.DataLoader(torch.ones(16, 2), batch_size=2)
        trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        trainer.fit(SignalsItself(), data)
        return {"eval/harmful_score": 1.0}

    monkeypatch.setattr(pipeline, "run", fake_run)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_:
        job.run_job(make_cfg(["model=toy", "logger=none"], output_dir=tmp_path / "job"))
    assert exit_.value.code == 143
    assert status(tmp_path / "job") == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_ray_sweep_gives_exactly_the_basic_launchers_numbers(sweeps):
    """Ray starts a local cluster (~5-10 s) and sets each task's OMP_NUM_THREADS to its num_cpus."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="pip install -e '.[ray]'")
    threads = worker_threads(2)  # the basic sweep's thread count
    sweep = sweeps["root"] / "ray"
    args = [*GRID, "hydra/launcher=ray_cluster", f"hydra.launcher.ray.remote.num_cpus={threads}"]
    result = run_sweep([*args, f"hydra.sweep.dir={sweep}"], sweeps["cache"])
    assert result.returncode == 1, result.stderr[-3000:]  # the two max_length=4 jobs fail, as under the basic launcher
    basic = jobs(sweeps["root"] / "basic")
    for name, job in jobs(sweep).items():
        assert status(job) == status(basic[name])
        if name not in FAILING:
            assert numbers(job) == numbers(basic[name]), f"job {name}"
    assert (sweep / "report.md").is_file()


@pytest.mark.slow
def test_submitit_local_sweep_gives_exactly_the_basic_launchers_numbers(sweeps):
    """The submitit plugin's local executor: the SLURM code path (pickled job, .submitit folder) without SLURM."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    sweep = sweeps["root"] / "submitit"
    result = run_sweep(
        [*GRID, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=30", f"hydra.sweep.dir={sweep}"],
        sweeps["cache"],
        threads=worker_threads(2),
    )
    assert result.returncode == 1, result.stderr[-3000:]
    basic = jobs(sweeps["root"] / "basic")
    for name, job in jobs(sweep).items():
        assert status(job) == status(basic[name])
        if name not in FAILING:
            assert numbers(job) == numbers(basic[name]), f"job {name}"
    assert list((sweep / ".submitit").glob("*/*_log.out"))  # each job's stdout, as on a cluster
    assert not math.isnan(numbers(jobs(sweep)["0"])["eval/harmful_score"])


def test_a_search_without_the_optuna_extra_names_it_and_the_grid(monkeypatch):
    from sbr_bench.cli import launchers

    monkeypatch.setattr(launchers, "installed", lambda package: package != "hydra_plugins.hydra_optuna_sweeper")
    assert launchers.missing_plugin(["-m", "experiment=attacker_grid_cpu"]) is None
    assert launchers.missing_plugin(["-m", "experiment=attacker_search_cpu", "defense=none"]) == (
        "experiment=attacker_search_cpu searches with the Optuna sweeper, which needs the optuna extra: "
        "pip install -e '.[optuna]' (in the repository) or pip install 'sbr-bench[optuna]'; without it, "
        "experiment=attacker_grid_cpu runs the same space as a grid"
    )
    assert "needs the optuna extra" in launchers.missing_plugin(["-m", "hydra/sweeper=attacker_search"])
