"""A local stand-in for an OpenAI-compatible chat-completions endpoint, and a finished job's folder to
re-judge: shared by the API-judge tests (tests/test_llm_api_judge.py, tests/test_strongreject_judge.py)."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "sk-test-0123456789-do-not-leak"
UNSUPPORTED_MAX_TOKENS = {
    "error": {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "unsupported_parameter",
    }
}


def rate_reply(body: dict) -> str:
    """The rating the server replies: the word after "RATE" in the last message."""
    match = re.search(r"RATE(\w+)", body["messages"][-1]["content"])
    return match.group(1) if match else "?"


class Server:
    """A chat-completions endpoint on 127.0.0.1 (HTTP/1.1, keep-alive), replying ``reply(body)``.

    ``fail`` is a list of answers given to the first requests, one each (then normal service): an
    HTTP code, or ``(code, headers)``, or ``(code, headers, json_body)``; ``always`` is a code
    answered to every request; ``delay`` seconds pass before each answer; ``reject_max_tokens``
    answers OpenAI's "unsupported parameter" 400 to every request that sends ``max_tokens``.
    """

    def __init__(self, reply=rate_reply):
        self.requests: list[dict] = []
        self.fail: list = []
        self.always: int | None = None
        self.delay = 0.0
        self.reject_max_tokens = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self, code, headers=None, body=None):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(
                    {
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "body": body,
                        "port": self.client_address[1],
                        "time": time.monotonic(),
                    }
                )
                if server.delay:
                    time.sleep(server.delay)
                if server.reject_max_tokens and "max_tokens" in body:
                    return self.answer(400, body=UNSUPPORTED_MAX_TOKENS)
                failure = server.always or (server.fail.pop(0) if server.fail else None)
                if failure is not None:
                    code, *rest = (failure,) if isinstance(failure, int) else failure
                    headers = rest[0] if rest else {}
                    error = rest[1] if len(rest) > 1 else {"error": {"message": f"status {code}"}}
                    return self.answer(code, headers, error)
                message = {"role": "assistant", "content": server.reply(body)}
                self.answer(
                    200, body={"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message}]}
                )

            def log_message(self, *args):
                pass

        self.reply = reply
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


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
