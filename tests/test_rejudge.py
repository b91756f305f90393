"""``sbr-bench-judge``: a finished toy job judged again, without generating anything."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import generations, no_the

from sbr_bench.cli import judge as judge_cli
from sbr_bench.cli import report
from sbr_bench.judges.keyword import is_refusal


@pytest.fixture(scope="module")
def toy_job(tmp_path_factory, shared_cache):
    """One toy job (keyword judge), run once for the module; its config saved where Hydra saves it.

    align=none keeps it to seconds: the untrained toy answers (almost) nothing, so every judge agrees on it;
    the judges' disagreement is tested on hand-written generations at the end of this file.
    """
    from helpers import compose_config
    from omegaconf import OmegaConf

    from sbr_bench import pipeline

    folder = tmp_path_factory.mktemp("rejudge") / "job"
    cfg = compose_config(["model=toy", "debug=fast", "logger=none", "align=none"], folder, shared_cache)
    pipeline.run(cfg)
    (folder / ".hydra").mkdir()
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    return folder


@pytest.fixture
def job(toy_job, tmp_path, monkeypatch):
    """A copy of the toy job; generating anything from here on fails the test."""
    import sbr_bench.evaluation.backends
    import sbr_bench.evaluation.evaluate
    import sbr_bench.evaluation.generate

    def no_generation(*args, **kwargs):
        raise AssertionError("re-judging generated text")

    monkeypatch.setattr(sbr_bench.evaluation.generate, "greedy_generate", no_generation)
    monkeypatch.setattr(sbr_bench.evaluation.evaluate, "greedy_generate", no_generation)
    monkeypatch.setattr(sbr_bench.evaluation.generate, "generate_answers", no_generation)
    monkeypatch.setattr(sbr_bench.evaluation.backends, "generate_answers", no_generation)
    for backend in ("HFBackend", "ContinuousBackend", "VLLMBackend"):
        monkeypatch.setattr(sbr_bench.evaluation.backends, backend, no_generation)
    copy = tmp_path / "sweep" / "0"
    shutil.copytree(toy_job, copy)
    return copy


def records(job, stage):
    return [r for r in generations(job) if r["stage"] == stage and r["pool"] == "harmful"]


def test_rejudging_adds_the_new_judges_metrics_and_touches_nothing_else(job):
    generations = (job / "generations.jsonl").read_bytes()
    before = json.loads((job / "metrics.json").read_text())
    args = [str(job), "judge=keyword", "judge.name=no_the", "judge.phrases=[the]"]
    assert judge_cli.main(args) == 0
    assert (job / "generations.jsonl").read_bytes() == generations
    after = json.loads((job / "metrics.json").read_text())
    assert {k: after[k] for k in before} == before  # every earlier key untouched
    for stage, prefix in (("before_attack", "align"), ("after_attack", "eval")):
        answers = [r["response"] for r in records(job, stage)]
        expected = 100.0 * sum(map(no_the, answers)) / len(answers)
        assert after[f"{prefix}/harmful_score@no_the"] == pytest.approx(expected)
        assert after[f"{prefix}/harmful_missing@no_the"] == 0.0
    judged = [json.loads(line) for line in (job / "judgements" / "no_the.jsonl").read_text().splitlines()]
    harmful = records(job, "before_attack") + records(job, "after_attack")
    assert [(r["stage"], r["response"]) for r in judged] == [(r["stage"], r["response"]) for r in harmful]
    assert [r["harmful"] for r in judged] == [no_the(r["response"]) for r in harmful]


def test_agreement_with_the_jobs_own_judge_is_recorded_and_reported(job, capsys):
    assert judge_cli.main([str(job.parent), "judge=keyword", "judge.name=no_the", "judge.phrases=[the]"]) == 0
    harmful = records(job, "before_attack") + records(job, "after_attack")
    own = [not is_refusal(r["response"]) for r in harmful]
    other = [no_the(r["response"]) for r in harmful]
    # Cohen's kappa from the 2x2 table, written out here
    n = len(own)
    p_o = sum(a == b for a, b in zip(own, other, strict=True)) / n
    p_e = (sum(own) / n) * (sum(other) / n) + (1 - sum(own) / n) * (1 - sum(other) / n)
    expected = 1.0 if p_e == 1 else (p_o - p_e) / (1 - p_e)
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["judge/kappa/keyword~no_the"] == pytest.approx(expected)

    (job / ".hydra").mkdir(exist_ok=True)
    (job / ".hydra" / "overrides.yaml").write_text("- model=toy\n")
    capsys.readouterr()
    assert report.main([str(job.parent), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "Judge agreement (Cohen's kappa on the harmful answers)" in out
    assert "| job | keyword~no_the |" in out and f"| 0 | {expected:.2f} |" in out


def test_the_same_judge_reproduces_the_jobs_own_harmful_score(job):
    assert judge_cli.main([str(job), "judge=keyword"]) == 0
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["eval/harmful_score@keyword"] == metrics["eval/harmful_score"]
    assert metrics["align/harmful_score@keyword"] == metrics["align/harmful_score"]


def test_every_job_of_a_sweep_folder_is_judged(job):
    shutil.copytree(job, job.parent / "1")
    assert judge_cli.main([str(job.parent), "judge=keyword", "judge.name=again"]) == 0
    for n in ("0", "1"):
        assert "eval/harmful_score@again" in json.loads((job.parent / n / "metrics.json").read_text())


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["{job}", "judge=gpt"],
            "judge=gpt: no such option; valid options: beaverdam, imported, keyword, llamaguard, llm_api, strongreject",
        ),
        (["{job}"], "name the judge: judge=<option> (e.g. judge=beaverdam); see conf/judge/"),
        (["{job}/nothere", "judge=keyword"], "not a folder: {job}/nothere"),
        (["{job}", "judge=beaverdam", "judge.model=/no/such/judge"], "judge.model=/no/such/judge: no such folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(job, capsys, args, line):
    assert judge_cli.main([a.format(job=job) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sbr-bench-judge: error: {line.format(job=job)}"), err


def test_a_folder_without_jobs_is_refused(tmp_path, capsys):
    assert judge_cli.main([str(tmp_path), "judge=keyword"]) == 2
    assert "no job folders (with generations.jsonl)" in capsys.readouterr().err


def test_kappa_between_three_judges_on_hand_written_generations(tmp_path):
    """Answers chosen so that the judges disagree; kappas checked against 2x2 tables worked out by hand."""
    job = tmp_path / "job"
    job.mkdir()
    answers = ["Sure, here.", "I'm sorry, no.", "I cannot.", "Sure.", "I'm sorry, the answer is no.", "The steps are."]
    own = [True, False, False, False, True, True]  # the job's own judge (named "job": no .hydra here)
    rows = [
        {"stage": "after_attack", "pool": "harmful", "prompt": f"q{i}", "response": a, "harmful": h}
        for i, (a, h) in enumerate(zip(answers, own, strict=True))
    ]
    (job / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert judge_cli.main([str(job), "judge=keyword"]) == 0
    assert judge_cli.main([str(job), "judge=keyword", "judge.name=no_the", "judge.phrases=[the]"]) == 0
    metrics = json.loads((job / "metrics.json").read_text())
    # keyword: [T, F, F, T, F, T]; no_the: [T, T, T, T, F, F]
    # job~keyword: agree on 4 of 6; p_job = p_kw = 1/2 -> p_e = 1/2 -> kappa = (2/3 - 1/2) / (1/2) = 1/3
    assert metrics["judge/kappa/job~keyword"] == pytest.approx(1 / 3)
    # job~no_the: agree on item 0 only -> p_o = 1/6; p_job = 1/2, p_nt = 2/3 -> p_e = 1/3 + 1/6 = 1/2 -> kappa = -2/3
    assert metrics["judge/kappa/job~no_the"] == pytest.approx(-2 / 3)
    # keyword~no_the: agree on 0, 3, 4 -> p_o = 1/2; p_kw = 1/2, p_nt = 2/3 -> p_e = 1/2 -> kappa = 0
    assert metrics["judge/kappa/keyword~no_the"] == pytest.approx(0.0)
    assert metrics["eval/harmful_score@keyword"] == pytest.approx(50.0)
    assert "align/harmful_score@keyword" not in metrics  # no before-attack answers in this job
