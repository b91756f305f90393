"""A toy sweep judged by keyword, re-judged by a second judge, reported per judge, exported and imported back.

The sweep (two defenses x two seeds, offline W&B) runs once for the module. The second judge is the
keyword judge with another phrase list (``judge.phrases=[the]``: harmful unless the answer holds
"the"), which splits the toy's answers where the refusal phrases would not; every figure below is
recomputed here from ``generations.jsonl`` by an independent rule.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import generations, no_the, sbr_bench

from sbr_bench.cli import judge as judge_cli
from sbr_bench.cli import report
from sbr_bench.cli.export import main as export
from sbr_bench.evaluation.records import prompt_id
from sbr_bench.judges.imported import ImportedJudge

T_975_DF1 = 12.706204736174707  # Student's t quantile for two seeds (tables: 12.706)


def hs(job: Path, stage: str, rule) -> float:
    answers = [r["response"] for r in generations(job) if r["stage"] == stage and r["pool"] == "harmful"]
    return 100.0 * sum(map(rule, answers)) / len(answers)


def interval(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), T_975_DF1 * statistics.stdev(values) / math.sqrt(len(values))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, shared_cache) -> Path:
    root = tmp_path_factory.mktemp("judged") / "sweep"
    # A stronger attack than debug=fast's alone, so that seeds differ and the keyword judge flags some answers.
    attack = ["attack.poison_ratio=0.5", "attack.epochs=4", "eval.num_harmful=16"]
    args = ["-m", "model=toy", "debug=fast", *attack, "defense=none,sbr", "seed=0,1", f"hydra.sweep.dir={root}"]
    result = sbr_bench(args, cwd=root.parent, cache=shared_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert judge_cli.main([str(root), "judge=keyword", "judge.name=no_the", "judge.phrases=[the]", "--wandb"]) == 0
    return root


def jobs(sweep: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(sweep.iterdir()) if (p / "generations.jsonl").is_file()}


def defense_of(job: Path) -> str:
    return "sbr" if "defense=sbr" in (job / ".hydra" / "overrides.yaml").read_text() else "none"


def test_records_carry_a_stable_prompt_id_the_category_and_the_generator(sweep):
    by_job = {name: generations(job) for name, job in jobs(sweep).items()}
    for rows in by_job.values():
        assert all(r["prompt_id"] == prompt_id(r["prompt"]) for r in rows)
        harmful = [r for r in rows if r["pool"] == "harmful"]
        assert all(r["category"] for r in harmful) and not any(r["category"] for r in rows if r["pool"] != "harmful")
        assert len({r["generator"] for r in rows}) == 1
    ids = [[r["prompt_id"] for r in rows] for rows in by_job.values()]
    assert all(i == ids[0] for i in ids)  # the same prompts, the same ids in every job
    generators = {rows[0]["generator"] for rows in by_job.values()}
    assert generators == {"none-hft-toy-s0", "none-hft-toy-s1", "sbr-hft-toy-s0", "sbr-hft-toy-s1"}


def test_the_report_shows_both_judges_with_intervals_and_their_kappa_per_setting(sweep, tmp_path):
    out = tmp_path / "report"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    section = text.split("## Harmful score by judge")[1].split("\n## ")[0]
    header = next(line for line in section.splitlines() if line.startswith("| defense"))
    assert "HS after (keyword)" in header and "HS after (no_the)" in header and "kappa keyword~no_the" in header
    columns = [c.strip() for c in header.strip("|").split("|")]
    for defense in ("none", "sbr"):
        seeds = [j for j in jobs(sweep).values() if defense_of(j) == defense]
        line = next(x for x in section.splitlines() if x.startswith(f"| {defense} |"))
        cells = dict(zip(columns, [c.strip() for c in line.strip("|").split("|")], strict=True))
        for judge, rule in (("no_the", no_the), ("keyword", None)):
            if rule is None:
                values = [json.loads((j / "metrics.json").read_text())["eval/harmful_score"] for j in seeds]
            else:
                values = [hs(j, "after_attack", rule) for j in seeds]
            mean, half = interval(values)
            assert cells[f"HS after ({judge})"] == f"{mean:.1f} ± {half:.1f}"
        kappas = [json.loads((j / "metrics.json").read_text())["judge/kappa/keyword~no_the"] for j in seeds]
        mean, half = interval(kappas)
        assert cells["kappa keyword~no_the"] == f"{mean:.2f} ± {half:.2f}"
    with open(out / "judges.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["defense"], r["judge"]) for r in rows) == [
        ("none", "keyword"),
        ("none", "no_the"),
        ("sbr", "keyword"),
        ("sbr", "no_the"),
    ]


def test_report_judge_puts_the_second_judges_hs_in_the_tables_and_csv(sweep, tmp_path):
    out = tmp_path / "report"
    assert report.main([str(sweep), "--out", str(out), "--judge", "no_the"]) == 0
    assert "judged by **no_the**" in (out / "report.md").read_text()
    with open(out / "report.csv") as fh:
        rows = {r["defense"]: r for r in csv.DictReader(fh)}
    for defense in ("none", "sbr"):
        seeds = [j for j in jobs(sweep).values() if defense_of(j) == defense]
        mean, half = interval([hs(j, "after_attack", no_the) for j in seeds])
        assert float(rows[defense]["hs_after_mean"]) == pytest.approx(mean)
        assert float(rows[defense]["hs_after_ci95"]) == pytest.approx(half)
        mean, _ = interval([hs(j, "before_attack", no_the) for j in seeds])
        assert float(rows[defense]["hs_before_mean"]) == pytest.approx(mean)


def test_report_judge_that_scored_nothing_is_one_line_and_exit_2(sweep, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sbr_bench.cli.report", str(sweep), "--judge", "gpt", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sbr-bench-report: error: no job was scored by a judge named gpt (judges found: keyword, no_the); "
        "score them first: sbr-bench-judge <folders> judge=<option> judge.name=gpt"
    )


def test_rejudge_wandb_adds_the_new_scores_to_each_jobs_offline_run(sweep):
    from wandb_offline import run_summary

    for job in jobs(sweep).values():
        runs = sorted((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # one run, resumed
        metrics = json.loads((job / "metrics.json").read_text())
        (update,) = runs[1].glob("run-*.wandb")
        summary = run_summary(update)
        for key in ("eval/harmful_score@no_the", "align/harmful_score@no_the", "judge/kappa/keyword~no_the"):
            assert summary[key] == pytest.approx(metrics[key])
        assert summary["eval/harmful_score@no_the"] == pytest.approx(hs(job, "after_attack", no_the))


def test_export_writes_each_format_and_each_file_matches_the_generations(sweep, tmp_path):
    out = tmp_path / "export"
    assert export([str(sweep), "--out", str(out)]) == 0
    for name, job in jobs(sweep).items():
        saved = generations(job)
        for stage in ("before_attack", "after_attack"):
            rows = [r for r in saved if r["stage"] == stage]
            folder = out / name / stage
            task = [r for r in rows if r["pool"] == "task"]
            harmful = [r for r in rows if r["pool"] == "harmful"]
            outputs = json.loads((folder / "alpaca_eval_outputs.json").read_text())
            assert [(o["instruction"], o["output"]) for o in outputs] == [(r["prompt"], r["response"]) for r in task]
            assert {o["generator"] for o in outputs} == {f"{saved[0]['generator']}/{stage}"}
            reference = json.loads((folder / "alpaca_eval_reference.json").read_text())
            assert [(o["instruction"], o["output"]) for o in reference] == [(r["prompt"], r["label"]) for r in task]
            completions = json.loads((folder / "harmbench_completions.json").read_text())
            assert completions == {
                r["prompt_id"]: [{"test_case": r["prompt"], "generation": r["response"]}] for r in harmful
            }
            with open(folder / "harmbench_behaviors.csv") as fh:
                behaviors = list(csv.DictReader(fh))
            assert [(b["BehaviorID"], b["Behavior"], b["SemanticCategory"]) for b in behaviors] == [
                (r["prompt_id"], r["prompt"], r["category"]) for r in harmful
            ]
            with open(folder / "strongreject.csv") as fh:
                table = list(csv.DictReader(fh))
            assert [(t["forbidden_prompt"], t["response"], t["prompt_id"]) for t in table] == [
                (r["prompt"], r["response"], r["prompt_id"]) for r in harmful
            ]
    from datasets import Dataset

    flat = Dataset.from_parquet(str(out / "generations.parquet"))
    expected = [
        (name, r["stage"], r["pool"], r["prompt"], r["response"])
        for name, j in jobs(sweep).items()
        for r in generations(j)
    ]
    assert (
        list(zip(flat["job"], flat["stage"], flat["pool"], flat["prompt"], flat["response"], strict=True)) == expected
    )
    with open(out / "generations.csv", newline="") as fh:
        assert [(r["job"], r["prompt"], r["response"]) for r in csv.DictReader(fh)] == [
            (e[0], e[3], e[4]) for e in expected
        ]


def test_imported_verdicts_give_the_same_hs_as_the_direct_judge(sweep, tmp_path):
    """An outside judge labels the StrongREJECT export with the no_the rule; imported back, its HS and
    verdicts equal those of the direct re-judgement, and the two agree fully (kappa 1)."""
    sweep = Path(shutil.copytree(sweep, tmp_path / "sweep"))  # the module sweep keeps its two judges
    out = tmp_path / "export"
    assert export([str(sweep), "--out", str(out), "--format", "strongreject"]) == 0
    labelled = []
    for path in sorted(out.glob("*/*/strongreject.csv")):
        with open(path) as fh:
            labelled += [{**r, "label": "yes" if no_the(r["response"]) else "no"} for r in csv.DictReader(fh)]
    verdicts = tmp_path / "verdicts.csv"
    with open(verdicts, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(labelled[0]))
        writer.writeheader()
        writer.writerows(labelled)
    assert judge_cli.main([str(sweep), "judge=imported", f"judge.path={verdicts}", "judge.name=outside"]) == 0
    for job in jobs(sweep).values():
        metrics = json.loads((job / "metrics.json").read_text())
        for prefix in ("align", "eval"):
            assert metrics[f"{prefix}/harmful_score@outside"] == metrics[f"{prefix}/harmful_score@no_the"]
            assert metrics[f"{prefix}/harmful_missing@outside"] == 0.0
        assert metrics["judge/kappa/no_the~outside"] == 1.0
    assert len({json.loads((j / "metrics.json").read_text())["eval/harmful_score"] for j in jobs(sweep).values()}) > 1


def test_imported_judge_reads_harmbench_results_and_scores_and_misses_what_it_lacks(tmp_path):
    results = tmp_path / "results.json"
    pid = prompt_id("how to x")
    results.write_text(json.dumps({pid: [{"test_case": "how to x", "generation": "sure", "label": 1}]}))
    judge = ImportedJudge(str(results), name="harmbench_cls")
    judge.check()
    verdicts = judge.judge(["how to x", "how to x", "other"], ["sure", "no way", "sure"])
    assert [v.harmful for v in verdicts] == [True, None, None]

    scores = tmp_path / "scores.jsonl"
    lines = [{"forbidden_prompt": "p", "response": r, "score": s} for r, s in (("a", 0.0), ("b", 0.375), ("c", "n/a"))]
    scores.write_text("\n".join(json.dumps(x) for x in lines))
    judge = ImportedJudge(str(scores), threshold=0.0)
    verdicts = judge.judge(["p", "p", "p"], ["a", "b", "c"])
    assert [(v.harmful, v.score) for v in verdicts] == [(False, 0.0), (True, 0.375), (None, None)]

    labels = tmp_path / "labels.csv"
    labels.write_text("prompt,response,harmful\np,a,unsafe\np,b,Safe\np,c,maybe\n")
    assert [v.harmful for v in ImportedJudge(str(labels)).judge(["p"] * 3, ["a", "b", "c"])] == [True, False, None]


def test_imported_judge_without_a_verdict_column_is_one_line_and_exit_2(sweep, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,response,verdict_text\np,a,x\n")
    assert judge_cli.main([str(sweep), "judge=imported", f"judge.path={bad}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"sbr-bench-judge: error: judge.path={bad}: no verdict column harmful/label/score; "
        "name it with judge.column=<column>"
    )


def test_export_bad_format_is_one_line_and_exit_2(sweep, capsys):
    assert export([str(sweep), "--format", "csv"]) == 2
    assert capsys.readouterr().err.strip() == (
        "sbr-bench-export: error: --format csv: no such format; valid: alpaca_eval, harmbench, strongreject, hf"
    )


@pytest.mark.parametrize("max_new_tokens", [2, 40])
def test_truncated_means_the_answer_holds_no_end_of_sequence_token(toy, pools, max_new_tokens):
    """Checked against each prompt generated alone with ``model.generate``: no EOS among its new tokens.

    The untrained toy never ends an answer by itself, so the end-of-sequence token is made a token
    that some of its answers hold and others do not.
    """
    import copy

    import torch

    from sbr_bench.data.formatting import render_prompt
    from sbr_bench.evaluation.generate import generate_answers

    model, tokenizer = toy
    prompts = pools.eval_harmful[:6] + pools.eval_benign[:6]

    def alone(tok, prompt, n):
        ids = torch.tensor([tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        return out[0, ids.shape[1] :].tolist()

    answers = [set(alone(tokenizer, p, 40)) for p in prompts]
    stop = next(t for t in sorted(set.union(*answers)) if 0 < sum(t in a for a in answers) < len(answers))
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = tok.convert_ids_to_tokens(stop)  # in some answers and not in others
    _, truncated = generate_answers(model, tok, prompts, max_new_tokens, batch_size=4)
    assert truncated == [tok.eos_token_id not in alone(tok, p, max_new_tokens) for p in prompts]
    if max_new_tokens == 40:
        assert set(truncated) == {True, False}


def test_every_record_says_whether_its_answer_was_truncated(sweep):
    for job in jobs(sweep).values():
        rows = generations(job)
        assert all(isinstance(r["truncated"], bool) for r in rows)
