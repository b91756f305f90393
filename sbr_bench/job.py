"""The task wrapper around one job: status.json, W&B finished or marked failed, one-line user errors.

- A single run with bad input prints one line (``sbr-bench: error: ...``) and exits with 2.
- Inside a sweep (``-m``), a job that fails records its error and traceback in ``status.json``,
  marks its W&B run failed, and the sweep goes on with the next job; the report lists it.
- SIGTERM (a cluster's time limit, ``kill``) records ``"interrupted"`` and stops the sweep.
- ``resume=true``: a job whose folder already holds an ok ``status.json`` for the same overrides
  is skipped, its results untouched; re-running an interrupted sweep command with
  ``resume=true hydra.sweep.dir=<its folder>`` runs only what is missing or failed.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import traceback
from pathlib import Path

from omegaconf import DictConfig

from sbr_bench import runtime
from sbr_bench.errors import ConfigError
from sbr_bench.io import read_json, write_json_atomic
from sbr_bench.wandb_run import finish_run

log = logging.getLogger(__name__)


class Interrupted(BaseException):
    """SIGTERM arrived: not an error of the job, and not to be swallowed by ``except Exception``."""


class _Signals:
    """The SIGTERM this job received, if any: the raised ``Interrupted`` is not the only trace of it.

    Inside ``Trainer.fit`` Lightning puts its own SIGTERM handler in front of ours and, at the next
    batch, raises ``SIGTERMException``, a bare ``SystemExit`` (exit code 0); our ``Interrupted`` can
    also be lost when the signal lands in code that swallows exceptions (a finalizer, a C callback).
    The flag lets ``run_job`` record the interruption whatever shape it reached us in.
    """

    received: int | None = None


def _on_sigterm(signum, frame):
    _Signals.received = signum
    raise Interrupted(f"signal {signum}")


NOT_WATCHED = object()


def watch_sigterm():
    """Install the SIGTERM handler; returns the previous one, or ``NOT_WATCHED`` outside the main thread.

    Python lets only the main thread set signal handlers. The launchers run a job in a main thread
    (basic: the sweep's; joblib/loky, Ray, submitit: their worker process's); a launcher that runs
    jobs in threads (joblib's threading backend) gets a job without the handler rather than a crash.
    """
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        log.warning("SIGTERM not watched: this job runs outside the main thread; a killed job leaves no status.json")
        return NOT_WATCHED


def user_error(err: BaseException) -> ConfigError | None:
    """The ConfigError behind ``err``, if any (Hydra's instantiate wraps what a constructor raises)."""
    while err is not None:
        if isinstance(err, ConfigError):
            return err
        err = err.__cause__
    return None


def job_overrides() -> list[str]:
    """The command-line overrides that name this job in a sweep (``resume=...`` does not)."""
    return [o for o in runtime.task_overrides() if runtime.override_key(o) != "resume"]


def result(metrics: dict) -> float:
    """What a sweeper gets back: the attacker's objective in a worst-case search, else the harmful score."""
    return metrics.get("search/objective", metrics["eval/harmful_score"])


def finished_result(output_dir: Path) -> float | None:
    """The result of a job folder that already finished ok with the same overrides, else None."""
    status_path = output_dir / "status.json"
    status = read_json(status_path) if status_path.is_file() else {}
    if status.get("status") != "ok":
        return None
    if status.get("overrides") != job_overrides():
        raise ConfigError(
            f"resume: {output_dir} holds a job with other overrides ({' '.join(status.get('overrides', []))}); "
            "resume with the sweep's original command and hydra.sweep.dir"
        )
    return result(read_json(output_dir / "metrics.json"))


def run_job(cfg: DictConfig) -> float:
    """Run the pipeline; always leave ``status.json`` and a finished W&B run behind.

    Returns the harmful score after the attack, or the attacker's objective in a worst-case search
    (``sbr_bench.search``): a float, so that a sweeper can optimise it and no model stays referenced
    between the jobs of a multirun; NaN for a failed sweep job.
    """
    from sbr_bench import pipeline

    output_dir = Path(cfg.paths.output_dir)
    status_path = output_dir / "status.json"
    if cfg.get("resume"):
        try:
            done = finished_result(output_dir)
        except ConfigError as err:  # another job's folder: leave it exactly as it is
            print(f"sbr-bench: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        if done is not None:
            log.info("resume: %s finished earlier, skipped", output_dir)
            return done
    _Signals.received = None
    previous_handler = watch_sigterm()
    try:
        metrics = pipeline.run(cfg)
        if _Signals.received is not None:  # the Interrupted raised for it was swallowed on the way
            raise Interrupted(f"signal {_Signals.received}")
    except (Interrupted, SystemExit) as err:
        if isinstance(err, SystemExit) and _Signals.received is None:
            raise  # an exit of its own, not a signal's (e.g. a sub-command's)
        write_json_atomic(status_path, {"status": "interrupted", "error": f"interrupted by signal {_Signals.received}"})
        finish_run(failed=True)
        log.error(
            "job interrupted (signal %s); re-run the command with resume=true to finish the sweep", _Signals.received
        )
        raise SystemExit(143) from None
    except Exception as err:
        cause = user_error(err)
        message = str(cause) if cause else f"{type(err).__name__}: {err}"
        write_json_atomic(status_path, {"status": "error", "error": message, "traceback": traceback.format_exc()})
        finish_run(failed=True)
        if runtime.is_multirun():
            # The other jobs of the sweep go on; status.json and the report say what went wrong.
            log.error("job failed: %s (traceback in %s)", message, status_path)
            return math.nan
        if cause:
            # Bad input: one line saying what is wrong and how to fix it, no traceback wall.
            print(f"sbr-bench: error: {message}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    finally:
        if previous_handler is not NOT_WATCHED:
            signal.signal(signal.SIGTERM, previous_handler)
    status = {"status": "ok", "defenses": pipeline.defense_names(cfg), "overrides": job_overrides()}
    write_json_atomic(status_path, status)
    finish_run(failed=False)
    return result(metrics)
