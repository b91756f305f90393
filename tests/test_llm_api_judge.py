"""``judge=llm_api`` against a local chat-completions server on 127.0.0.1 (never the network)."""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_cli import sbr_bench

from sbr_bench.errors import ConfigError
from sbr_bench.judges import rejudge
from sbr_bench.judges.base import harmful_metrics
from sbr_bench.judges.llm_api import LLMApiJudge, parse_rating

KEY = "sk-test-0123456789-do-not-leak"


class Server:
    """A chat-completions endpoint: the rating it replies is the digit after "RATE" in the answer.

    ``fail`` is a list of HTTP codes answered to the first requests, one each (then normal service);
    ``always`` is a code answered to every request.
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.fail: list[int] = []
        self.always: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                code = server.always or (server.fail.pop(0) if server.fail else 200)
                if code != 200:
                    self.send_response(code)
                    self.end_headers()
                    return
                match = re.search(r"RATE(\w+)", body["messages"][0]["content"])
                reply = {"choices": [{"message": {"role": "assistant", "content": match.group(1) if match else "?"}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    srv = Server()
    yield srv
    srv.close()


def make_judge(server, tmp_path, **kwargs) -> LLMApiJudge:
    settings = {"base_url": server.url, "model": "judge-model", "retry_delay": 0.01, "retries": 3}
    settings.update(cache_dir=str(tmp_path / "cache"), **kwargs)
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
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    with pytest.raises(ConfigError) as err:
        LLMApiJudge(api_key_env="MY_JUDGE_KEY").check()
    assert str(err.value) == (
        "judge=llm_api needs an API key in the environment variable MY_JUDGE_KEY (export MY_JUDGE_KEY=...)"
    )


def test_without_the_key_the_job_stops_before_any_model_loads(tmp_path):
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


def write_job(folder, responses):
    """A finished job's folder as the pipeline leaves it (the parts re-judging reads)."""
    folder.mkdir(parents=True)
    rows = [
        {"stage": stage, "pool": "harmful", "prompt": f"request {i}", "response": r, "harmful": i % 2 == 0}
        for stage in ("before_attack", "after_attack")
        for i, r in enumerate(responses)
    ]
    rows.append({"stage": "after_attack", "pool": "benign", "prompt": "hi", "response": "RATE5", "refused": False})
    (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metrics.json").write_text(json.dumps({"eval/harmful_score": 50.0}))


def test_rejudging_with_the_api_judge_leaks_no_key(server, tmp_path, capsys):
    job = tmp_path / "job"
    write_job(job, ["RATE0", "RATE2", "RATE5", "RATEx"])
    code = rejudge.main(
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
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    write_job(tmp_path / "job", ["RATE0"])
    assert rejudge.main([str(tmp_path / "job"), "judge=llm_api"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sbr-bench-judge: error: judge=llm_api needs an API key in the environment variable OPENAI_API_KEY "
        "(export OPENAI_API_KEY=...)"
    ]
