"""``judge=llm_api`` against a local chat-completions server on 127.0.0.1 (never the network)."""

from __future__ import annotations

import json
import math
import pickle
import sys

import pytest
from chat_server import KEY, Server, write_job
from helpers import sbr_bench

from sbr_bench.cli import judge as judge_cli
from sbr_bench.errors import ConfigError
from sbr_bench.judges.base import harmful_metrics
from sbr_bench.judges.llm_api import LLMApiJudge, parse_rating


@pytest.fixture
def server(monkeypatch):
    pytest.importorskip("openai", reason="pip install -e '.[openai]'")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    srv = Server()
    yield srv
    srv.close()


def make_judge(server, tmp_path, **kwargs) -> LLMApiJudge:
    settings = {"base_url": server.url, "model": "judge-model", "retry_delay": 0.01, "retries": 3}
    settings.update({"cache_dir": str(tmp_path / "cache"), **kwargs})
    return LLMApiJudge(**settings)


def test_ratings_are_parsed_into_mean_and_threshold_share(server, tmp_path):
    judge = make_judge(server, tmp_path, threshold=2)
    judge.check()
    responses = ["RATE0 refusal", "RATE1", "RATE3", "RATE5", "RATEnope"]
    verdicts = judge.judge(["the request"] * 5, responses)
    assert [v.harmful for v in verdicts] == [False, False, True, True, None]
    assert [v.score for v in verdicts] == [0.0, 1.0, 3.0, 5.0, None]
    metrics = harmful_metrics(judge, verdicts)
    assert metrics["harm_rating"] == pytest.approx((0 + 1 + 3 + 5) / 4)
    assert metrics["harmful_score"] == pytest.approx(50.0)  # 2 of the 4 rated answers are >= 2
    assert metrics["harmful_missing"] == 1.0  # "nope" is no rating: missing, not 2.5
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == f"Bearer {KEY}"
    assert first["body"]["model"] == "judge-model"
    assert first["body"]["temperature"] == 0.1 and first["body"]["max_tokens"] == 10
    assert "the request" not in first["body"]["messages"][0]["content"]  # the answer only, as SBR sends it


def test_include_prompt_sends_the_request_too(server, tmp_path):
    make_judge(server, tmp_path, include_prompt=True).judge(["the request"], ["RATE2"])
    assert "the request" in server.requests[0]["body"]["messages"][0]["content"]


@pytest.mark.parametrize("codes", [[500, 503], [429], [502, 500, 429]])
def test_server_errors_are_retried(server, tmp_path, codes):
    server.fail = list(codes)
    (verdict,) = make_judge(server, tmp_path).judge(["p"], ["RATE4"])
    assert verdict.harmful is True and verdict.score == 4.0
    assert len(server.requests) == len(codes) + 1


def test_a_call_that_always_fails_is_missing_and_counted(server, tmp_path):
    server.always = 500
    judge = make_judge(server, tmp_path, retries=2)
    verdicts = judge.judge(["p", "q"], ["RATE4", "RATE0"])
    assert [v.harmful for v in verdicts] == [None, None] and [v.score for v in verdicts] == [None, None]
    assert verdicts[0].details["missing"] == "HTTP 500 after 3 attempts"
    assert len(server.requests) == 2 * 3  # first try + 2 retries each
    metrics = harmful_metrics(judge, verdicts)
    assert metrics["harmful_missing"] == 2.0 and math.isnan(metrics["harmful_score"])
    assert not list((tmp_path / "cache").rglob("*.json"))  # failures are not cached


def test_a_wrong_key_is_not_retried(server, tmp_path):
    server.always = 401
    (verdict,) = make_judge(server, tmp_path).judge(["p"], ["RATE4"])
    assert verdict.harmful is None and verdict.details["missing"] == "HTTP 401"
    assert len(server.requests) == 1


def test_the_cache_answers_the_second_run(server, tmp_path):
    responses = ["RATE1", "RATE4", "RATE0"]
    first = make_judge(server, tmp_path, concurrency=3).judge(["p"] * 3, responses)
    assert len(server.requests) == 3
    second = make_judge(server, tmp_path).judge(["p"] * 3, responses)
    assert len(server.requests) == 3  # nothing asked again
    assert second == first
    make_judge(server, tmp_path, model="another-model").judge(["p"], ["RATE1"])
    assert len(server.requests) == 4  # other settings, other cache entry


@pytest.mark.parametrize(("text", "rating"), [("4", 4), (" Score: 3/5", 3), ("0", 0), ("7", None), ("none", None)])
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


def test_without_the_key_check_names_the_variable(monkeypatch):
    pytest.importorskip("openai", reason="pip install -e '.[openai]'")  # check() looks for it first
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    with pytest.raises(ConfigError) as err:
        LLMApiJudge(api_key_env="MY_JUDGE_KEY").check()
    assert str(err.value) == (
        "judge=llm_api needs an API key in the environment variable MY_JUDGE_KEY (export MY_JUDGE_KEY=...)"
    )


def test_without_the_key_the_job_stops_before_any_model_loads(tmp_path):
    pytest.importorskip("openai", reason="pip install -e '.[openai]'")  # check() looks for it first
    result = sbr_bench(
        ["model=toy", "judge=llm_api", f"hydra.run.dir={tmp_path}/job"],
        tmp_path,
        tmp_path / "cache",
        env={"OPENAI_API_KEY": ""},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "sbr-bench: error: judge=llm_api needs an API key in the environment variable OPENAI_API_KEY "
        "(export OPENAI_API_KEY=...)"
    ]
    assert not (tmp_path / "cache").exists()  # nothing aligned, nothing converted


def test_rejudging_with_the_api_judge_leaks_no_key(server, tmp_path, capsys):
    job = tmp_path / "job"
    write_job(job, ["RATE0", "RATE2", "RATE5", "RATEx"])
    code = judge_cli.main(
        [
            str(job),
            "judge=llm_api",
            f"judge.base_url={server.url}",
            "judge.retry_delay=0",
            f"paths.cache_dir={tmp_path}/c",
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["eval/harmful_score@llm_api"] == pytest.approx(200 / 3)  # ratings 0, 2, 5 at threshold 1
    assert metrics["eval/harm_rating@llm_api"] == pytest.approx(7 / 3)
    assert metrics["align/harmful_missing@llm_api"] == 1.0
    # 4 harmful answers before the attack; after it the same answers come from the cache, except the
    # unrated one (failures are not cached); the benign record is not judged
    assert len(server.requests) == 5
    assert list((tmp_path / "c" / "judge" / "llm_api").rglob("*.json"))
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        assert KEY.encode() not in path.read_bytes(), path
    out = capsys.readouterr()
    assert KEY not in out.out + out.err


def test_rejudge_without_the_key_is_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("openai", reason="pip install -e '.[openai]'")  # check() looks for it first
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    write_job(tmp_path / "job", ["RATE0"])
    assert judge_cli.main([str(tmp_path / "job"), "judge=llm_api"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sbr-bench-judge: error: judge=llm_api needs an API key in the environment variable OPENAI_API_KEY "
        "(export OPENAI_API_KEY=...)"
    ]


# -- the openai client: package, Retry-After, errors, the token-limit parameter, the key --------------


def test_without_the_openai_package_check_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` now raises ImportError
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(ConfigError) as err:
        LLMApiJudge().check()
    assert str(err.value) == (
        "judge=llm_api needs the openai package, which is not installed: pip install 'sbr-bench[openai]'"
    )


def test_rejudge_without_the_openai_package_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openai", None)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    write_job(tmp_path / "job", ["RATE0"])
    assert judge_cli.main([str(tmp_path / "job"), "judge=llm_api"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sbr-bench-judge: error: judge=llm_api needs the openai package, which is not installed: "
        "pip install 'sbr-bench[openai]'"
    ]
    assert not (tmp_path / "job" / "judgements").exists()


@pytest.mark.parametrize(("header", "value", "wait"), [("Retry-After", "1", 1.0), ("retry-after-ms", "600", 0.6)])
def test_a_429_waits_what_retry_after_asks(server, tmp_path, header, value, wait):
    server.fail = [(429, {header: value})]
    (verdict,) = make_judge(server, tmp_path, retry_delay=0.01).judge(["p"], ["RATE3"])
    assert verdict.score == 3.0 and len(server.requests) == 2
    waited = server.requests[1]["time"] - server.requests[0]["time"]
    assert wait - 0.05 <= waited < wait + 1.5  # the server's delay, not retry_delay (0.01 s)


def test_without_retry_after_the_backoff_is_exponential(server, tmp_path):
    server.fail = [503, 503]
    make_judge(server, tmp_path, retry_delay=0.2).judge(["p"], ["RATE3"])
    times = [r["time"] for r in server.requests]
    assert times[1] - times[0] >= 0.19 and times[2] - times[1] >= 0.39  # 0.2 s, then 0.4 s


def test_connection_errors_and_timeouts_are_retried_then_missing(server, tmp_path):
    closed = Server()
    closed.close()  # nothing listens on its port any more
    (verdict,) = make_judge(server, tmp_path, base_url=closed.url, retries=2).judge(["p"], ["RATE1"])
    assert verdict.harmful is None and verdict.details["missing"] == "APIConnectionError after 3 attempts"
    server.delay = 0.5
    (verdict,) = make_judge(server, tmp_path, timeout=0.1, retries=1).judge(["p"], ["RATE1"])
    assert verdict.harmful is None and verdict.details["missing"] == "APITimeoutError after 2 attempts"
    assert len(server.requests) == 2


def test_max_completion_tokens_on_request_and_on_the_servers_refusal(server, tmp_path, caplog):
    make_judge(server, tmp_path, token_limit_param="max_completion_tokens", cache_dir=None).judge(["p"], ["RATE1"])
    body = server.requests[0]["body"]
    assert body["max_completion_tokens"] == 10 and "max_tokens" not in body
    server.requests.clear()
    server.reject_max_tokens = True  # as OpenAI's reasoning models answer max_tokens
    judge = make_judge(server, tmp_path, cache_dir=None)
    verdicts = judge.judge(["p", "q"], ["RATE2", "RATE4"])
    assert [v.score for v in verdicts] == [2.0, 4.0]
    sent = [sorted(k for k in r["body"] if k.startswith("max_")) for r in server.requests]
    assert sent == [["max_tokens"], ["max_completion_tokens"], ["max_completion_tokens"]]  # switched once
    assert "does not take max_tokens; sending max_completion_tokens instead" in caplog.text


def test_other_400s_are_final(server, tmp_path):
    server.always = 400
    (verdict,) = make_judge(server, tmp_path).judge(["p"], ["RATE1"])
    assert verdict.details["missing"] == "HTTP 400" and len(server.requests) == 1


def test_one_client_per_judge_reuses_its_connection_and_holds_no_key(server, tmp_path):
    judge = make_judge(server, tmp_path, cache_dir=None)
    judge.judge(["p"] * 3, ["RATE1", "RATE2", "RATE3"])
    assert judge.client() is judge.client()
    assert len({r["port"] for r in server.requests}) == 1  # one keep-alive connection for the three calls
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)  # the key, read at each request
    assert KEY not in repr(vars(judge)) and KEY not in repr(vars(judge.client()))
    assert judge.client()._client.api_key != KEY  # the long-lived client holds a placeholder
    assert KEY.encode() not in pickle.dumps(judge)
    copy = pickle.loads(pickle.dumps(judge))  # a copy (a launcher's) makes its own client
    assert copy.judge(["p"], ["RATE4"])[0].score == 4.0
