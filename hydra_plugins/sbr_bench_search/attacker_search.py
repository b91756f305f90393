"""``hydra/sweeper=attacker_search``: Hydra's Optuna sweeper, made resumable, with the default attack first.

The search itself is ``hydra-optuna-sweeper``'s (the ``optuna`` extra: its sampler, its study, its
launch loop); this plugin adds only what a worst-case search over job folders needs:

- ``first_trial``: the parameters of trial 0, enqueued into a new study. The presets set it to the
  tier's default attack, so the worst case is a maximum over a set that contains the default, and
  job 0 of an undefended search is the reference of the utility floor (``sbr_bench.search``).
- Resume: the study lives in ``storage`` (SQLite in the sweep folder by default). Run the same
  command again with ``hydra.sweep.dir=<its folder>`` and the sweeper loads the study, runs only
  what is left of ``n_trials`` (the study's total, not a count of new trials), numbers the new jobs
  after the existing folders, and re-runs a trial that was interrupted (left "running" in the
  study) with the same parameters in the same folder; the study marks the interrupted attempt
  failed. A finished trial is never run again.
- A job that failed (sbr-bench's task returns NaN so that the other jobs go on) becomes a failed
  trial: Optuna's sampler leaves it out, and the sweep continues (``max_failure_rate`` defaults to 1).
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module outside sys.modules,
# where dataclasses cannot resolve string annotations.

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

log = logging.getLogger(__name__)

try:  # the optuna extra; without it this option is simply not registered
    import optuna
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # pragma: no cover - exercised by installs without the extra
    OptunaSweeper = None


class TrialFailed(RuntimeError):
    """The job of a trial failed; its status.json says why."""


class FailedOnNaN:
    """A launcher whose jobs that returned NaN (sbr-bench's failed sweep job) come back as failed jobs."""

    def __init__(self, launcher: Any) -> None:
        self.launcher = launcher

    def launch(self, job_overrides, initial_job_idx):
        from hydra.core.utils import JobStatus

        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        for ret in returns:
            value = ret._return_value if ret.status == JobStatus.COMPLETED else None
            if isinstance(value, float) and math.isnan(value):
                ret.status = JobStatus.FAILED
                folder = ret.hydra_cfg.hydra.runtime.output_dir if ret.hydra_cfg else ret.working_dir
                ret.return_value = TrialFailed(f"job {folder} failed; its status.json says why")
        return returns


INTERRUPTED = "interrupted"  # user attribute of a trial whose job was killed; its parameters ran again


def resume(study, n_trials: int) -> tuple[int, int]:
    """(trials left to run, number of the next job folder) of a loaded study; re-queues interrupted trials.

    Job folders are numbered in launch order, one per trial that was not an interrupted attempt, so
    the next folder's number is the count of those trials, and a re-queued trial (run first) lands
    in the folder its interrupted attempt left.
    """
    from optuna.trial import TrialState

    for trial in study.trials:
        if trial.state == TrialState.RUNNING:
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params)
            log.info("resume: trial %d was interrupted; its parameters run again", trial.number)
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    done = [t for t in study.trials if t.state in finished and not t.user_attrs.get(INTERRUPTED)]
    return max(0, n_trials - len(done)), len(done)


def first_trial_outside(params: dict, first_trial: dict) -> str | None:
    """One line naming the first value of ``first_trial`` outside the space of ``params``, else None."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    space, _ = create_params_from_overrides([f"{key}={value}" for key, value in params.items()])
    for name, value in first_trial.items():
        distribution = space.get(name)
        if distribution is None:
            return f"hydra.sweeper.first_trial.{name}: not a key of the search space (hydra.sweeper.params)"
        try:
            inside = distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            return (
                f"trial 0 (the attack as composed) has {name}={value}, outside the search space "
                f"{params[name]}; drop that override or widen hydra.sweeper.params.{name}"
            )
    return None


if OptunaSweeper is not None:

    @dataclass
    class AttackerSearchConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.sbr_bench_search.attacker_search.AttackerSearchSweeper"
        first_trial: Any = None  # parameters of trial 0 in a new study ({name: value}); null: none
        storage: Any = "sqlite:///${hydra.sweep.dir}/study.db"
        study_name: Any = "attacker_search"
        direction: Any = "maximize"
        n_jobs: int = 1  # trials asked at once; 1: each trial's sampler sees every finished one
        max_failure_rate: float = 1.0  # a failed job is a failed trial, not the end of the search

    ConfigStore.instance().store(
        group="hydra/sweeper", name="attacker_search", node=AttackerSearchConf, provider="sbr_bench"
    )

    class AttackerSearchSweeper(OptunaSweeper):
        """Hydra's Optuna sweeper with ``first_trial`` and resume (see the module docstring)."""

        def __init__(self, first_trial: Any = None, **optuna_args: Any) -> None:
            super().__init__(**optuna_args)
            self.first_trial = dict(first_trial) if first_trial else None

        def setup(self, *, hydra_context, task_function, config) -> None:
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            impl = self.sweeper
            impl.launcher = FailedOnNaN(impl.launcher)
            if impl.storage is None:
                raise ValueError("hydra.sweeper.storage is null: the attacker search keeps its study on disk")
            Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
            study = optuna.create_study(
                study_name=impl.study_name,
                storage=impl.storage,
                sampler=None,
                directions=impl._get_directions(),
                load_if_exists=True,
            )
            if not study.trials:
                if self.first_trial:
                    study.enqueue_trial(self.first_trial)
                return
            impl.n_trials, impl.job_idx = resume(study, impl.n_trials)
            log.info("resume: %d trials in the study; %d left to run", len(study.trials), impl.n_trials)

        def sweep(self, arguments):
            if self.sweeper.n_trials == 0:
                log.info("the study has all its trials; nothing left to run")
                return None
            try:
                return super().sweep(arguments)
            except ValueError:
                # Optuna's sweeper ends by asking the study for its best trial, which fails when no trial
                # finished; the report (run next, by the sweep's callback) lists why each job failed.
                study = optuna.load_study(study_name=self.sweeper.study_name, storage=self.sweeper.storage)
                if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
                    raise
                log.error("no trial of the study finished")
                return None
