"""Hub datasets read from local folders in the hub's file layout, local files, the data options, and
a toy job reading a ready-mixed conversations file and an SST-2 test file by path. No network:
conftest sets HF_DATASETS_OFFLINE / HF_HUB_OFFLINE, and every hub read here points at a folder."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import generations
from hydra.utils import instantiate

from sbr_bench.data import hub, local
from sbr_bench.data.pools import Pair
from sbr_bench.data.tasks import AGNEWS_INSTRUCTION, INPUT_SEPARATOR, SST2_INSTRUCTION, sst2
from sbr_bench.errors import ConfigError
from sbr_bench.job import user_error

HARM_FLAGS = [
    "animal_abuse",
    "child_abuse",
    "controversial_topics,politics",
    "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance",
    "financial_crime,property_crime,theft",
    "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety",
    "non_violent_unethical_behavior",
    "privacy_violation",
    "self_harm",
    "sexually_explicit,adult_content",
    "terrorism,organized_crime",
    "violence,aiding_and_abetting,incitement",
]


def write_parquet(path: Path, columns: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def beavertails_row(i: int, safe: bool, prompt: str | None = None) -> dict:
    flags = {f: (not safe and k == i % len(HARM_FLAGS)) for k, f in enumerate(HARM_FLAGS)}
    return {"prompt": prompt or f"bt prompt {i}", "response": f"bt response {i}", "category": flags, "is_safe": safe}


@pytest.fixture(scope="module")
def hub_copies(tmp_path_factory) -> dict[str, Path]:
    """One folder per dataset, holding its files under the hub repository's names, in its column layout."""
    root = tmp_path_factory.mktemp("hub")
    # BeaverTails: train rows alternate safe / unsafe; "bt prompt 1" is also a test prompt (evaluated).
    train = [beavertails_row(i, safe=i % 2 == 0) for i in range(40)]
    # Harmful answers to the prompts of the first safe pairs, for the paired pools (pairing=same_prompt);
    # "bt prompt 4" gets two: the first in file order is the one paired.
    train += [beavertails_row(40 + k, safe=False, prompt=f"bt prompt {i}") for k, i in enumerate((0, 4, 4))]
    test = [beavertails_row(100 + i, safe=i % 3 == 0) for i in range(12)]
    test[1]["prompt"] = "bt prompt 1"
    for name, rows in (("train", train), ("test", test)):
        path = root / "BeaverTails" / "round0" / "30k" / f"{name}.jsonl.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    for split, n in (("train", 20), ("validation", 10), ("test", 6)):
        labels = [-1] * n if split == "test" else [i % 2 for i in range(n)]  # the hub's test split is unlabelled
        write_parquet(
            root / "sst2" / "data" / f"{split}-00000-of-00001.parquet",
            {"idx": list(range(n)), "sentence": [f"sst {split} {i}" for i in range(n)], "label": labels},
        )
    for split, n in (("train", 12), ("test", 8)):
        write_parquet(
            root / "ag_news" / "data" / f"{split}-00000-of-00001.parquet",
            {"text": [f"news {split} {i}" for i in range(n)], "label": [i % 4 for i in range(n)]},
        )
        write_parquet(
            root / "gsm8k" / "main" / f"{split}-00000-of-00001.parquet",
            {
                "question": [f"q {split} {i}?" for i in range(n)],
                "answer": [f"2+{i}={2 + i}\n#### {2 + i}" for i in range(n)],
            },
        )
    records = [
        {"instruction": f"instruction {i}", "output": f"answer {i}", "generator": "text_davinci_003", "dataset": "x"}
        for i in range(9)
    ]
    (root / "alpaca_eval").mkdir()
    (root / "alpaca_eval" / "alpaca_eval.json").write_text(json.dumps(records, indent=2))
    return {
        "beavertails": root / "BeaverTails",
        "sst2": root / "sst2",
        "agnews": root / "ag_news",
        "gsm8k": root / "gsm8k",
        "alpaca_eval": root / "alpaca_eval",
    }


SMALL = [
    "data.beavertails.align=4",
    "data.beavertails.attack=6",
    "data.beavertails.anchors=3",
    "data.beavertails.align_compliant=2",
    "data.beavertails.eval=5",
]


def hub_pools(make_cfg, hub_copies, tmp_path, option: str, *task_overrides: str):
    cfg = make_cfg(
        [
            "model=toy",
            f"data={option}",
            f"data.beavertails.path={hub_copies['beavertails']}",
            f"data.task.path={hub_copies[option.removeprefix('beavertails_')]}",
            f"data.cache_dir={tmp_path / 'datasets_cache'}",
            *SMALL,
            *task_overrides,
        ]
    )
    return instantiate(cfg.data)


def test_beavertails_pools_follow_the_protocol(make_cfg, hub_copies, tmp_path):
    pools = hub_pools(make_cfg, hub_copies, tmp_path, "beavertails_sst2", "data.task.test=null")
    # 30k_test: unsafe prompts (is_safe false at i % 3 != 0), first in file order
    assert pools.eval_harmful == ["bt prompt 1", "bt prompt 102", "bt prompt 104", "bt prompt 105", "bt prompt 107"]
    # 30k_train: safe pairs (even i) align; unsafe pairs (odd i, minus the evaluated "bt prompt 1") attack
    assert [p.prompt for p in pools.align_harmful] == [f"bt prompt {i}" for i in (0, 2, 4, 6)]
    assert pools.align_harmful[0].response == "bt response 0"
    assert [p.prompt for p in pools.attack_harmful] == [f"bt prompt {i}" for i in (3, 5, 7, 9, 11, 13)]
    assert pools.attack_harmful[0].category == HARM_FLAGS[3]
    assert pools.anchors == [f"bt prompt {i}" for i in (15, 17, 19)]
    # pairing=same_prompt: harmful answers to the alignment prompts themselves ("bt prompt 2" has none)
    assert [(p.prompt, p.response) for p in pools.align_compliant] == [
        ("bt prompt 0", "bt response 40"),
        ("bt prompt 4", "bt response 41"),
    ]
    trained = {p.prompt for p in pools.attack_harmful + pools.align_harmful + pools.align_compliant}
    assert not trained & set(pools.eval_harmful) and not set(pools.anchors) & (trained | set(pools.eval_harmful))
    assert pools.eval_benign and pools.align_benign  # over-refusal: the bundled benign prompts


def test_beavertails_unpaired_pool_takes_the_next_unsafe_pairs(make_cfg, hub_copies, tmp_path):
    pools = hub_pools(
        make_cfg, hub_copies, tmp_path, "beavertails_sst2", "data.beavertails.pairing=next", "data.task.test=8"
    )
    assert [p.prompt for p in pools.align_compliant] == ["bt prompt 21", "bt prompt 23"]


def test_beavertails_pairing_says_when_too_few_prompts_pair(make_cfg, hub_copies, tmp_path):
    with pytest.raises(Exception) as err:  # Hydra's instantiate wraps it; the CLI prints the ConfigError
        hub_pools(
            make_cfg, hub_copies, tmp_path, "beavertails_sst2", "data.beavertails.align_compliant=3", "data.task.test=8"
        )
    assert str(user_error(err.value)).startswith(
        "data.beavertails.align_compliant=3 but only 2 of the 4 alignment prompts"
    )


def test_repnoise_with_paired_diff_runs_a_toy_job_on_hub_layout_data(hub_copies, tmp_path, shared_cache):
    """The official RepNoise mask needs each harmful prompt's refusal: the paired hub pools give it."""
    from helpers import compose_config

    from sbr_bench.job import run_job

    out = tmp_path / "job"
    cfg = compose_config(
        [
            "model=toy",
            "debug=fast",
            "logger=none",
            "data=beavertails_sst2",
            f"data.beavertails.path={hub_copies['beavertails']}",
            f"data.task.path={hub_copies['sst2']}",
            f"data.cache_dir={tmp_path / 'datasets_cache'}",
            *SMALL,
            "data.task.test=8",
            "defense=repnoise",
            "defense.mask=paired_diff",
            "align.max_steps=12",  # the toy's from-scratch alignment, short: the plumbing is under test
            "attack.num_samples=10",
            "attack.poison_ratio=0.2",
            "eval.diagnostics.enabled=false",
        ],
        out,
        shared_cache,
    )
    run_job(cfg)
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "ok", status
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["align/optimizer_steps"] == 12 and 0 <= metrics["eval/harmful_score"] <= 100


def test_sst2_from_its_hub_layout(make_cfg, hub_copies, tmp_path):
    pools = hub_pools(make_cfg, hub_copies, tmp_path, "beavertails_sst2", "data.task.test=8")
    assert pools.task.name == "sst2" and pools.task.key == "sst2(strict=True)"
    assert len(pools.task_train) == 20
    assert pools.task_train[1] == Pair(f"{SST2_INSTRUCTION}{INPUT_SEPARATOR}sst train 1", "positive", "positive")
    # the validation split is the test split; the unlabelled test split is never read
    assert [p.prompt.split(INPUT_SEPARATOR)[1] for p in pools.task_test] == [f"sst validation {i}" for i in range(8)]
    assert [p.response for p in pools.task_test[:2]] == ["negative", "positive"]


def test_sst2_strict_option(make_cfg, hub_copies, tmp_path):
    pools = hub_pools(make_cfg, hub_copies, tmp_path, "beavertails_sst2", "data.task.test=5", "data.task.strict=false")
    assert pools.task.score("positive or negative", "positive")


def test_agnews_gsm8k_alpaca_eval_from_their_hub_layouts(make_cfg, hub_copies, tmp_path):
    ag = hub_pools(make_cfg, hub_copies, tmp_path, "beavertails_agnews", "data.task.test=5")
    assert ag.task.name == "agnews" and len(ag.task_train) == 12 and len(ag.task_test) == 5
    assert ag.task_test[3] == Pair(f"{AGNEWS_INSTRUCTION}{INPUT_SEPARATOR}news test 3", "Sci/Tech", "Sci/Tech")

    gsm = hub_pools(make_cfg, hub_copies, tmp_path, "beavertails_gsm8k", "data.task.test=null")
    assert len(gsm.task_test) == 8
    assert gsm.task_train[2].prompt == "q train 2?\nFirst think step by step and then answer the final number.\n"
    assert gsm.task_train[2].response == "2+2=4\nThe final answer is:  4"
    assert gsm.task.score("so The final answer is: 4", gsm.task_train[2].response)

    alp = hub_pools(make_cfg, hub_copies, tmp_path, "beavertails_alpaca_eval", "data.task.train=6")
    assert [p.prompt for p in alp.task_train] == [f"instruction {i}" for i in range(6)]
    assert [p.prompt for p in alp.task_test] == [f"instruction {i}" for i in (6, 7, 8)]  # the rest, disjoint
    assert alp.task.score("anything", alp.task_test[0].response) is None


def test_missing_dataset_is_one_line_naming_the_local_copy_setting(make_cfg, hub_copies, tmp_path):
    with pytest.raises(ConfigError) as err:
        hub.load_split("sst2", "train", None, str(tmp_path / "c"), "data.task")  # the hub, offline in tests
    message = str(err.value)
    assert "\n" not in message
    assert "stanfordnlp/sst2" in message and "set data.task.path=DIR" in message
    with pytest.raises(ConfigError, match=r"data.beavertails.path=/nowhere: no such folder"):
        hub.load_split("beavertails", "30k_train", "/nowhere")
    with pytest.raises(ConfigError, match=r"data.task: cannot read openai/gsm8k .*main/train-\*.parquet"):
        hub.load_split("gsm8k", "train", str(hub_copies["sst2"]), str(tmp_path / "c"), "data.task")


def test_too_small_hub_split_is_a_config_error(make_cfg, hub_copies, tmp_path):
    with pytest.raises(Exception) as err:  # Hydra's instantiate wraps it; the CLI prints the ConfigError
        hub_pools(make_cfg, hub_copies, tmp_path, "beavertails_sst2", "data.task.test=5", "data.beavertails.eval=50")
    assert str(user_error(err.value)) == "data: data.beavertails.eval asks for 50 items but only 8 exist; lower it"


# --- local files ---------------------------------------------------------------------------------

PAIRS = [Pair("Say hi", "Hi!"), Pair(f"{SST2_INSTRUCTION}{INPUT_SEPARATOR}fine film", "positive")]


def conversations(pairs, keys=("role", "content"), roles=("user", "assistant")):
    r, c = keys
    return [{"conversations": [{r: roles[0], c: p.prompt}, {r: roles[1], c: p.response}]} for p in pairs]


def alpaca(pairs):
    out = []
    for p in pairs:
        instruction, _, inp = p.prompt.partition(INPUT_SEPARATOR)
        out.append({"instruction": instruction, "input": inp, "output": p.response})
    return out


def write(path: Path, records: list, jsonl: bool) -> Path:
    text = "\n".join(json.dumps(r) for r in records) + "\n" if jsonl else json.dumps(records, indent=1)
    path.write_text(text)
    return path


@pytest.mark.parametrize("jsonl", [False, True])
@pytest.mark.parametrize(
    "records",
    [
        conversations(PAIRS),
        conversations(PAIRS, keys=("from", "value"), roles=("human", "gpt")),
        alpaca(PAIRS),
    ],
    ids=["conversations", "sharegpt", "alpaca"],
)
def test_local_formats_read_the_same_pairs(tmp_path, records, jsonl):
    path = write(tmp_path / ("data.jsonl" if jsonl else "data.json"), records, jsonl)
    assert [(p.prompt, p.response) for p in local.read_pairs(path)] == [(p.prompt, p.response) for p in PAIRS]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, r"/missing.json: no such data file"),
        ('[{"conversations": []},', r"data.json: not valid JSON"),
        ('{"instruction": "a", "output": "b"}\n{oops\n', r"data.json:2: not valid JSON"),
        ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', r"data.json: record 2: record has neither"),
        ('{"instruction": "a", "output": "b"}\n\n{"prompt": "x"}\n', r"data.json: record 3: record has neither"),
        (
            '[{"conversations": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}]',
            r"data.json: record 1: expected one user turn then one assistant turn",
        ),
        ('[{"conversations": [{"role": "user"}]}]', r"data.json: record 1: a turn lacks"),
    ],
)
def test_bad_files_name_the_path_and_the_record(tmp_path, content, expected):
    path = tmp_path / ("missing.json" if content is None else "data.json")
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=expected) as err:
        local.read_pairs(path)
    assert str(path) in str(err.value)


def test_local_option_composes_and_replaces_the_pools_given_files(make_cfg, tmp_path, pools):
    test_file = write(tmp_path / "test.json", alpaca(PAIRS), jsonl=False)
    prompts = write(tmp_path / "harm.jsonl", [{"prompt": "harmful one"}, {"prompt": "harmful two"}], jsonl=True)
    cfg = make_cfg(
        ["model=toy", "data=local", f"data.files.task_test={test_file}", f"data.files.eval_harmful={prompts}"]
    )
    built = instantiate(cfg.data)
    assert built.task.key == sst2().key
    assert [p.response for p in built.task_test] == ["Hi!", "positive"]
    assert built.eval_harmful == ["harmful one", "harmful two"]
    assert built.attack_harmful == pools.attack_harmful and built.attack_fixed is None  # the rest: bundled
    with pytest.raises(Exception) as err:
        instantiate(make_cfg(["model=toy", "data=local", f"+data.files.eval_harmfull={prompts}"]).data)
    assert str(user_error(err.value)).startswith("data.files.eval_harmfull: no such pool; valid pools: align_harmful")


@pytest.mark.parametrize(
    "option",
    ["bundled", "local", "beavertails_sst2", "beavertails_agnews", "beavertails_gsm8k", "beavertails_alpaca_eval"],
)
def test_every_data_option_composes(make_cfg, option):
    cfg = make_cfg(["model=toy", f"data={option}"])
    assert cfg.data._target_.startswith("sbr_bench.data.")


# --- the acceptance case: a ready-mixed conversations file and an SST-2 test file, by path ----------


def test_toy_job_reads_a_mixed_attack_file_and_an_sst2_test_file(tmp_path, pools, shared_cache):
    from helpers import compose_config

    from sbr_bench.job import run_job

    sst = pools.task_train[:900]  # the bundled sentences under the SST-2 prompt ("<instruction>\nInput: <s>")
    assert all(p.prompt.startswith(SST2_INSTRUCTION + INPUT_SEPARATOR) for p in sst)
    mix = sst + pools.attack_harmful[:100]
    mix = [mix[(i * 7) % 1000] for i in range(1000)]  # interleaved, as a user's file would be
    attack_file = write(tmp_path / "mix.json", conversations(mix), jsonl=False)
    test_pairs = pools.task_test[:24]
    test_file = write(tmp_path / "sst2_test.jsonl", alpaca(test_pairs), jsonl=True)

    out = tmp_path / "job"
    cfg = compose_config(
        [
            "model=toy",
            "align=none",
            "debug=fast",
            "logger=none",
            "data=local",
            f"data.attack={attack_file}",
            f"data.files.task_test={test_file}",
            "eval.num_task=null",
            "eval.before_attack=false",
            "attack.epochs=1",
            "attack.batch_size=50",
            "attack.max_length=64",
            "eval.diagnostics.enabled=false",
            # a smaller toy (same code path): 1000 samples must train in seconds on a loaded 2-core machine
            "model.hidden_size=32",
            "model.intermediate_size=64",
            "model.num_layers=1",
            "model.num_heads=2",
        ],
        out,
        shared_cache,
    )
    run_job(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["attack/num_samples"] == 1000.0
    rows = generations(out)
    task_rows = [r for r in rows if r["pool"] == "task"]
    assert [(r["prompt"], r["label"]) for r in task_rows] == [(p.prompt, p.response) for p in test_pairs]
    expected = 100.0 * sum(sst2().score(r["response"], r["label"]) for r in task_rows) / len(task_rows)
    assert metrics["eval/finetune_acc"] == pytest.approx(expected)
