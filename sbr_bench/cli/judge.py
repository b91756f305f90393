"""``sbr-bench-judge``: score the saved generations of finished jobs with another judge.

    sbr-bench-judge multirun/default/2026-11-27_10-00-00 judge=beaverdam
    sbr-bench-judge outputs/default/<date_time> judge=llm_api judge.model=gpt-4o-mini judge.name=gpt4o_mini
    sbr-bench-judge multirun/default/2026-11-27_10-00-00 judge=beaverdam --wandb

Generation is the expensive part of a job and judging the cheap, disputed one: a sweep judged
with the keyword rule on a CPU can be judged again with BeaverDam or an LLM on another machine,
without generating anything. For each job folder (any folder under the arguments that holds a
``generations.jsonl``), the judge composed from ``conf/judge`` (Hydra compose API, the same
overrides as ``sbr-bench``) scores the harmful-pool answers of both stages, and the job gains:

- ``judgements/<judge name>.jsonl``: one record per harmful answer (stage, prompt, response,
  verdict, score and details);
- in ``metrics.json`` (rewritten atomically, every other key untouched):
  ``align/harmful_score@<name>`` (before the attack), ``eval/harmful_score@<name>`` (after it),
  ``.../harmful_missing@<name>`` and, for a judge with a rating, ``.../harm_rating@<name>``;
- ``judge/kappa/<a>~<b>``: Cohen's kappa between every pair of judges that scored this job's
  answers (the job's own judge, from ``generations.jsonl``, and each ``judgements/*.jsonl``).

With ``--wandb``, the new metrics also go into the summary of each job's W&B run (resumed under
its id, offline runs offline: ``wandb sync`` uploads them with the run).

``generations.jsonl`` is only read. Bad input (an unknown judge, a missing API key, no job folder)
is one line on stderr and exit code 2.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from tqdm.auto import tqdm

from sbr_bench.errors import ConfigError
from sbr_bench.judges.base import check_judge, judge_name
from sbr_bench.judges.rejudge import find_jobs, rejudge_job

PROG = "sbr-bench-judge"
FLAGS = ("--wandb",)  # add the new scores to each job's W&B run


def fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def build_judge(overrides: list[str]):
    """The judge of ``conf/judge/<option>.yaml`` with the overrides, instantiated and checked."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from sbr_bench import CONF_DIR
    from sbr_bench.job import user_error
    from sbr_bench.schema import check_plugin
    from sbr_bench.settings import plain

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except Exception as err:  # Hydra's own messages (a key that does not exist, bad syntax): first line
        raise ConfigError(str(err).strip().splitlines()[0]) from None
    finally:
        GlobalHydra.instance().clear()
    try:
        check_plugin(plain(cfg.judge), "judge")  # types and ranges, as for a job
        judge = instantiate(cfg.judge)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        raise cause from None
    check_judge(judge)
    return judge


def split_args(argv: list[str]) -> tuple[list[Path], list[str], list[str]]:
    """Folders, ``key=value`` overrides and ``--flags``, in any order."""
    flags = [a for a in argv if a.startswith("--")]
    rest = [a for a in argv if not a.startswith("--")]
    return [Path(a) for a in rest if "=" not in a], [a for a in rest if "=" in a], flags


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sbr-bench-judge``."""
    from sbr_bench.cli.precheck import option_problem

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    folders, overrides, flags = split_args(argv)
    unknown = [f for f in flags if f not in FLAGS]
    if unknown:
        return fail(f"unknown option {unknown[0]}; the options: {', '.join(FLAGS)}")
    if not any(o.startswith("judge=") for o in overrides):
        return fail("name the judge: judge=<option> (e.g. judge=beaverdam); see conf/judge/")
    problem = option_problem(overrides)
    if problem:
        return fail(problem)
    missing = [str(f) for f in folders if not f.is_dir()]
    if not folders or missing:
        return fail(f"not a folder: {', '.join(missing)}" if missing else "give one or more job or sweep folders")
    jobs = find_jobs(folders)
    if not jobs:
        return fail(f"no job folders (with generations.jsonl) under {', '.join(map(str, folders))}")
    try:
        judge = build_judge(overrides)
        results = {job: rejudge_job(job, judge) for job in tqdm(jobs, desc=PROG, unit="job")}
    except ConfigError as err:
        return fail(str(err))
    name = judge_name(judge)
    for job, new in results.items():
        before, after = new.get(f"align/harmful_score@{name}"), new.get(f"eval/harmful_score@{name}")
        missing_count = sum(
            v for k, v in new.items() if k.startswith(("align/harmful_missing", "eval/harmful_missing"))
        )
        print(f"{job}: HS@{name} before {_fmt(before)} after {_fmt(after)} ({missing_count:.0f} missing)")
    if "--wandb" in flags:
        update_runs(results)
    return 0


def update_runs(results: dict[Path, dict[str, float]]) -> None:
    """``--wandb``: each job's new scores into its W&B run's summary (``wandb_run.add_to_run``)."""
    from sbr_bench.wandb_run import add_to_run

    offline = []
    for job, new in results.items():
        found = add_to_run(job, new)
        if found is None:
            print(f"{PROG}: {job}: no W&B run in {job / 'wandb'} (logger=none?); skipped", file=sys.stderr)
        elif found[1] == "offline":
            offline.append(job)
    if offline:
        print(
            f"{PROG}: {len(offline)} offline W&B runs gained the new scores; upload them with "
            f"wandb sync <job>/wandb/offline-run-* (e.g. wandb sync {offline[0] / 'wandb'}/offline-run-*)",
            file=sys.stderr,
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
