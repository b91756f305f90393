"""The chat-completions client the API judges share (``llm_api``, ``strongreject``), on the ``openai`` SDK.

``openai`` is an optional extra (``pip install 'sbr-bench[openai]'``); it is imported when a judge
is checked or used, never when this module loads, so a config naming an API judge is validated,
and refused in one line when the package is missing, before any model loads.

One ``openai.OpenAI`` client per judge (one connection pool, reused by every request and every
worker thread), pointed at ``base_url`` with the judge's ``timeout``.

The key. It is read from the environment variable named by ``api_key_env`` for each request and
handed to that request only (``client.with_options(api_key=...)``, a per-call copy sharing the
connection pool); the long-lived client holds a placeholder, and no key is kept on the judge, in
its settings (the cache key), the records or the logs. A key passed as an extra header instead
would appear in the SDK's DEBUG log of the request options; an ``api_key`` does not.

Retries are this module's own loop, not the SDK's (the client is built with ``max_retries=0``):
connection errors, timeouts, HTTP 429 and 5xx are retried ``retries`` times; any other HTTP error
(400, 401, 404, ...) is final. The wait before retry n (1, 2, ...) is the server's ``Retry-After``
(seconds or an HTTP date; ``retry-after-ms`` first, as the SDK reads them), capped at
``MAX_RETRY_AFTER`` seconds, and ``retry_delay`` x 2^(n-1) seconds when the server names none. The
SDK's loop would honour those headers too, but its backoff starts at a fixed 0.5 s (``retry_delay``
would mean nothing), it also retries 408 / 409, it gives up at once on a Retry-After above two
minutes, and it hides how many attempts were made, which the missing verdict reports.

The token limit. The SBR script sends ``max_tokens``; OpenAI's reasoning models (o1, o3, gpt-5, ...)
refuse it with a 400 "unsupported_parameter" error and want ``max_completion_tokens``.
``token_limit_param`` names the parameter to send (default ``max_tokens``, what the scripts
send); and when the server answers that 400 naming the parameter sent, the client switches to the
other name for the rest of the run (logged once) and sends the request again, without counting it
as a retry. Which name carries the limit does not change what the judge is asked, so it is not
part of the cache key.
"""

from __future__ import annotations

import email.utils
import hashlib
import inspect
import json
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from sbr_bench.errors import ConfigError
from sbr_bench.io import read_json, write_json_atomic
from sbr_bench.judges.base import Judge, Verdict

log = logging.getLogger(__name__)

TokenLimitParam = Literal["max_tokens", "max_completion_tokens"]
TOKEN_LIMIT_PARAMS = ("max_tokens", "max_completion_tokens")
RETRY_STATUS = frozenset({429} | set(range(500, 600)))
MAX_RETRY_AFTER = 300.0  # seconds: a longer Retry-After is waited this long, then the call is tried again
_KEY_PLACEHOLDER = "key-read-from-the-environment-per-request"


def require_openai(judge: str):
    """The ``openai`` module, or a one-line ConfigError naming the extra that provides it."""
    try:
        import openai
    except ImportError:
        raise ConfigError(
            f"judge={judge} needs the openai package, which is not installed: pip install 'sbr-bench[openai]'"
        ) from None
    return openai


def api_key(env: str, judge: str) -> str:
    """The key, read from the environment now (never stored)."""
    key = os.environ.get(env, "")
    if not key:
        raise ConfigError(f"judge={judge} needs an API key in the environment variable {env} (export {env}=...)")
    return key


def check_base_url(base_url: str) -> None:
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"judge.base_url={base_url} must start with http:// or https://")


def retry_after(headers: Any) -> float | None:
    """Seconds the server asks to wait (``retry-after-ms``, ``Retry-After`` in seconds or as a date), or None."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    try:
        value = float(millis) / 1000
        if math.isfinite(value) and value >= 0:
            return value
    except (TypeError, ValueError):
        pass
    header = headers.get("retry-after")
    if header is None:
        return None
    try:
        value = float(header)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


class CallFailed(Exception):
    """No reply after the retries, or a final error: the reason, for the missing verdict."""


class _Transient(Exception):
    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.wait = wait


class ChatClient:
    """Chat-completions calls to one endpoint with one model: ``complete(messages) -> reply text``."""

    def __init__(
        self,
        *,
        judge: str,
        base_url: str,
        api_key_env: str,
        model: str,
        temperature: float,
        max_tokens: int,
        token_limit_param: TokenLimitParam = "max_tokens",
        retries: int = 5,
        retry_delay: float = 1.0,
        timeout: float = 60.0,
    ):
        openai = require_openai(judge)
        self.judge = judge
        self.api_key_env = api_key_env
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.token_limit_param = token_limit_param
        self.retries = retries
        self.retry_delay = retry_delay
        self._openai = openai
        self._lock = threading.Lock()
        self._client = openai.OpenAI(api_key=_KEY_PLACEHOLDER, base_url=base_url, timeout=timeout, max_retries=0)

    def close(self) -> None:
        self._client.close()

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The reply's text; CallFailed with the reason when there is none."""
        reason = ""
        for attempt in range(self.retries + 1):
            try:
                return self._once(messages)
            except _Transient as err:
                reason = f"{err} after {attempt + 1} attempts"
                if attempt < self.retries:
                    wait = self.retry_delay * 2**attempt if err.wait is None else min(err.wait, MAX_RETRY_AFTER)
                    time.sleep(wait)
        raise CallFailed(reason)

    def _once(self, messages: list[dict[str, str]]) -> str:
        """One request (two when the token-limit parameter is switched on the way)."""
        openai = self._openai
        for _ in range(2):
            param = self.token_limit_param
            client = self._client.with_options(api_key=api_key(self.api_key_env, self.judge))
            try:
                completion = client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=self.temperature,
                    **{param: self.max_tokens},
                )
            except openai.APIStatusError as err:
                if err.status_code in RETRY_STATUS:
                    raise _Transient(f"HTTP {err.status_code}", retry_after(err.response.headers)) from None
                if err.status_code == 400 and self._rejects(err, param):
                    self._switch(param)
                    continue
                raise CallFailed(f"HTTP {err.status_code}") from None
            except openai.APIConnectionError as err:  # APITimeoutError included
                raise _Transient(type(err).__name__) from None
            except openai.APIResponseValidationError as err:
                raise CallFailed(f"malformed reply ({type(err).__name__})") from None
            try:
                return str(completion.choices[0].message.content or "")
            except (AttributeError, IndexError, KeyError, TypeError) as err:
                raise CallFailed(f"malformed reply ({type(err).__name__})") from None
        raise CallFailed("HTTP 400 (the server refused both max_tokens and max_completion_tokens)")

    @staticmethod
    def _rejects(err, param: str) -> bool:
        """Whether a 400 is the "unsupported parameter" error about the token-limit parameter sent."""
        message = str(getattr(err, "message", "") or "").lower()
        unsupported = getattr(err, "code", None) == "unsupported_parameter" or "unsupported parameter" in message
        return unsupported and (getattr(err, "param", None) == param or param in message)

    def _switch(self, refused: str) -> None:
        with self._lock:
            if self.token_limit_param != refused:
                return  # another thread switched already
            other = next(p for p in TOKEN_LIMIT_PARAMS if p != refused)
            self.token_limit_param = other
        log.warning("judge %s: the server does not take %s; sending %s instead", self.judge, refused, other)


def connection(arguments: dict) -> dict:
    """The ``ChatJudge.__init__`` arguments among a subclass's (its ``locals()`` at the top of ``__init__``)."""
    return {key: arguments[key] for key in inspect.signature(ChatJudge.__init__).parameters if key != "self"}


class ChatJudge(Judge):
    """What the API judges share: the checks, the client, the on-disk cache, the calls in parallel.

    A subclass sets ``option`` (its ``judge=`` name); its ``__init__`` lists the connection settings
    below with its own defaults (the config check reads that signature) and hands them on with
    ``super().__init__(**connection(locals()))``. It defines ``settings()`` (the cache key besides
    the pair; no secret), ``messages(prompt, response)`` and ``verdict(reply)``. A verdict is cached
    only when it is not missing.
    """

    option = "api"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        name: str,
        api_key_env: str,
        temperature: float,
        max_tokens: int,
        token_limit_param: TokenLimitParam,
        threshold: float,
        retries: int,
        retry_delay: float,
        timeout: float,
        concurrency: int,
        cache_dir: str | None,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = name
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.token_limit_param = token_limit_param
        self.threshold = threshold
        self.retries = retries
        self.retry_delay = retry_delay
        self.timeout = timeout
        self.concurrency = concurrency
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None

    def check(self) -> None:
        check_base_url(self.base_url)
        require_openai(self.option)
        self.api_key()

    def api_key(self) -> str:
        """The key, read from the environment now (never stored on the judge)."""
        return api_key(self.api_key_env, self.option)

    def settings(self) -> dict:
        raise NotImplementedError

    def messages(self, prompt: str, response: str) -> list[dict[str, str]]:
        raise NotImplementedError

    def verdict(self, reply: str) -> Verdict:
        raise NotImplementedError

    def client(self) -> ChatClient:
        """The judge's one client, made at first use (the openai package is needed from here on)."""
        lock = self.__dict__.setdefault("_client_lock", threading.Lock())
        with lock:
            if self.__dict__.get("_client") is None:
                self._client = ChatClient(
                    judge=self.option,
                    base_url=self.base_url,
                    api_key_env=self.api_key_env,
                    model=self.model,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                    token_limit_param=self.token_limit_param,
                    retries=self.retries,
                    retry_delay=self.retry_delay,
                    timeout=self.timeout,
                )
            return self._client

    def __getstate__(self) -> dict:  # a client and a lock do not pickle; a copy makes its own
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_client_lock")}

    def rate(self, prompt: str, response: str) -> Verdict:
        """The verdict for one pair: from the cache, or from the API with retries."""
        cached = self.cache_path(prompt, response)
        if cached is not None and cached.is_file():
            return self.verdict(read_json(cached)["reply"])
        try:
            reply = self.client().complete(self.messages(prompt, response))
        except CallFailed as err:
            return Verdict(None, details={"missing": str(err)})
        verdict = self.verdict(reply)
        if cached is not None and verdict.harmful is not None:
            write_json_atomic(cached, {"reply": reply, "settings": self.settings()})
        return verdict

    def cache_path(self, prompt: str, response: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = json.dumps({"settings": self.settings(), "prompt": prompt, "response": response}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.json"

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        self.api_key()  # the key may have left the environment since check()
        self.client()
        pairs = list(zip(prompts, responses, strict=True))
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            verdicts = list(
                tqdm(pool.map(lambda pr: self.rate(*pr), pairs), total=len(pairs), desc=self.name, leave=False)
            )
        missing = sum(v.harmful is None for v in verdicts)
        if missing:
            log.warning(
                "judge %s: %d of %d answers got no verdict (recorded as missing)", self.name, missing, len(pairs)
            )
        return verdicts
