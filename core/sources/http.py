"""A polite, robust HTTP client shared by the TMDB and poster-URL downloaders.

One ``HttpClient`` holds a client-side rate limiter shared by all its threads, a timeout on every
request (and a total deadline and size limit on every body), retries with exponential backoff and
jitter for 5xx, connection errors, timeouts (urllib3's ``Retry``) and invalid JSON, and honours
``429 Retry-After`` by pausing every thread. Credentials given as ``secrets`` are replaced by ``***`` in every message it writes, and its
exceptions are raised outside ``except`` blocks so no chained exception carries a raw URL.
"""
from __future__ import annotations

import email.utils
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlencode

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from urllib3.util import Retry

from core.errors import AuthError, DownloadError, RateLimitError

USER_AGENT = "poster-genre-explorer/0.1 (+python-requests)"
SECRET_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token"})
_SECRET_PARAM_PATTERN = re.compile(r"((?:api_?key|access_token|token)=)[^&\s'\"]+", re.IGNORECASE)
RETRY_STATUSES = frozenset({429, *range(500, 600)})
_INVALID = "invalid URL"
_TOO_LARGE = "response larger than"
_BEARER_PATTERN = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)


@dataclass(frozen=True)
class HttpConfig:
    requests_per_second: float = 20.0
    timeout: float = 15.0
    """Seconds allowed to connect, between two received bytes, and (x4) for a whole body."""
    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 60.0
    max_bytes: int = 25_000_000
    user_agent: str = USER_AGENT


@dataclass(frozen=True)
class HttpResponse:
    status: int
    content: bytes
    headers: Mapping[str, str]


class HttpStatusError(DownloadError):
    """A 4xx answer that retrying will not change (404, 410, ...)."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret value, ``api_key=...`` parameter and Bearer token replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _SECRET_PARAM_PATTERN.sub(r"\1***", text)
    return _BEARER_PATTERN.sub(r"\1***", text)


def describe_url(url: str, params: Mapping[str, Any] | None = None,
                 secrets: Iterable[str] = ()) -> str:
    """The full URL for a message, with credential parameters shown as ``***``."""
    if params:
        shown = {k: ("***" if k.lower() in SECRET_PARAMS else v) for k, v in params.items()}
        url = f"{url}{'&' if '?' in url else '?'}{urlencode(shown)}"
    return redact(url, secrets)


def parse_retry_after(value: str | None, now: Callable[[], datetime] | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now() if now else datetime.now(timezone.utc)
    return max(0.0, (when - current).total_seconds())


class _RedactLog(logging.Filter):
    """urllib3 logs retries and requests with their query string, where an API key may be."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


for _name in ("urllib3.connectionpool", "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(_RedactLog())


class RateLimiter:
    """Spaces request starts at least ``1 / rate`` seconds apart across threads; ``hold`` pauses all."""

    def __init__(self, requests_per_second: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / requests_per_second if requests_per_second > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)

    def hold(self, seconds: float) -> None:
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)


class PoliteRetry(Retry):
    """urllib3's ``Retry`` that waits through the client's shared ``RateLimiter``.

    A 429 pauses every thread of the client for ``Retry-After`` (capped at ``max_retry_after``);
    other retries sleep the exponential backoff; every retry then waits for its rate-limit slot.
    """

    def __init__(self, *args: Any, limiter: RateLimiter | None = None,
                 sleep: Callable[[float], None] = time.sleep, max_retry_after: float = 60.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limiter = limiter or RateLimiter(0)
        self.sleep_fn = sleep
        self.max_retry_after = max_retry_after

    def new(self, **kwargs: Any) -> "PoliteRetry":
        retry = super().new(**kwargs)
        retry.limiter, retry.sleep_fn, retry.max_retry_after = self.limiter, self.sleep_fn, self.max_retry_after
        return retry

    def sleep(self, response: Any = None) -> None:
        if response is not None and response.status == 429:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            self.limiter.hold(self.get_backoff_time() if wait is None else min(wait, self.max_retry_after))
        elif (backoff := self.get_backoff_time()) > 0:
            self.sleep_fn(backoff)
        self.limiter.wait()


class HttpClient:
    """GET with rate limiting, timeouts and retries; one ``requests.Session`` per thread.

    Retries of the transport (5xx, 429, connection errors, timeouts before the answer) are urllib3's
    ``Retry`` mounted on the session; an answer whose body cannot be used (invalid JSON, too slow)
    is retried here, from the same budget of ``max_retries``.
    """

    def __init__(self, config: HttpConfig | None = None, *, secrets: Iterable[str] = (),
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config or HttpConfig()
        self._secrets = tuple(s for s in secrets if s)
        self._sleep = sleep
        self.limiter = RateLimiter(self.config.requests_per_second, sleep=sleep)
        self.retry = PoliteRetry(
            total=self.config.max_retries, status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET"}),
            backoff_factor=self.config.backoff_base, backoff_max=self.config.backoff_max,
            backoff_jitter=self.config.backoff_base, respect_retry_after_header=True, raise_on_status=False,
            limiter=self.limiter, sleep=sleep, max_retry_after=self.config.max_retry_after)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    def __enter__(self) -> "HttpClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def get_json(self, url: str, *, params: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> Any:
        return self._get(url, params, headers, parse_json=True)

    def get_bytes(self, url: str, *, params: Mapping[str, Any] | None = None,
                  headers: Mapping[str, str] | None = None) -> bytes:
        return self._get(url, params, headers, parse_json=False)

    def _get(self, url: str, params: Mapping[str, Any] | None, headers: Mapping[str, str] | None,
             *, parse_json: bool) -> Any:
        shown = describe_url(url, params, self._secrets)
        budget = self.config.max_retries + 1
        used, problem, rate_limited = 0, "no attempt made", False
        while used < budget:
            if used:
                self._sleep(min(self.config.backoff_max, self.config.backoff_base * 2 ** (used - 1)))
            self.limiter.wait()
            response, problem, attempts = self._attempt(url, params, headers, budget - used - 1)
            used += attempts
            if response is None and problem.startswith(_INVALID):
                raise DownloadError(f"{problem} {shown}", "check the URL")
            if response is None and problem.startswith(_TOO_LARGE):
                raise DownloadError(f"{problem} for {shown}", "the file is too large for a poster")
            rate_limited = response is not None and response.status == 429
            if response is not None:
                problem, value = self._interpret(response, shown, parse_json)
                if problem is None:
                    return value
        if rate_limited:
            raise RateLimitError(f"{problem} for {shown}; gave up after {used} attempts",
                                 "the server asks for fewer requests; lower --rate and rerun to resume")
        raise DownloadError(f"{problem} for {shown}; gave up after {used} attempts",
                            "the server may be down or overloaded; rerun later and the download resumes")

    def _attempt(self, url: str, params: Mapping[str, Any] | None, headers: Mapping[str, str] | None,
                 retries: int) -> tuple[HttpResponse | None, str, int]:
        """One request with up to ``retries`` transport retries: (response or None, a reason without the
        URL, the attempts it took)."""
        timeout = self.config.timeout
        session = self._session()
        failure, attempts = "", retries + 1
        try:
            session.get_adapter(url).max_retries = self.retry.new(total=retries)
            with session.get(url, params=params, headers=dict(headers or {}),
                             timeout=(timeout, timeout), stream=True) as raw:
                history = getattr(getattr(raw.raw, "retries", None), "history", ())
                attempts = len(history) + 1
                content = self._read_body(raw)
                return HttpResponse(raw.status_code, content, CaseInsensitiveDict(raw.headers)), "", attempts
        except (requests.Timeout, _BodyTimeout):
            failure = f"timed out (limit {timeout:g} s)"
        except _BodyTooLarge:
            failure = f"{_TOO_LARGE} {self.config.max_bytes:,} bytes"
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as err:
            failure = f"{_INVALID} ({type(err).__name__}):"
        except requests.ConnectionError as err:
            failure = (f"timed out (limit {timeout:g} s)" if _timed_out(err)
                       else f"connection failed ({type(err).__name__})")
        except requests.RequestException as err:
            failure = f"request failed ({type(err).__name__})"
        return None, failure, attempts

    def _read_body(self, raw: requests.Response) -> bytes:
        deadline = time.monotonic() + 4 * self.config.timeout
        chunks, size = [], 0
        for chunk in raw.iter_content(chunk_size=65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > self.config.max_bytes:
                raise _BodyTooLarge()
            if time.monotonic() > deadline:
                raise _BodyTimeout()
        return b"".join(chunks)

    def _interpret(self, response: HttpResponse, shown: str, parse_json: bool) -> tuple[str | None, Any]:
        """(None, value) on success, (reason, None) to retry; raises for answers retrying will not change."""
        status = response.status
        if status == 429:
            return "rate limited (HTTP 429)", None
        if status >= 500:
            return f"server error (HTTP {status})", None
        if status in (401, 403):
            raise AuthError(f"HTTP {status} (credentials refused) for {shown}",
                            "check the credentials for this server")
        if status >= 400:
            raise HttpStatusError(status, f"HTTP {status} for {shown}")
        if not parse_json:
            return None, response.content
        try:
            return None, json.loads(response.content.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return "invalid JSON in the answer", None

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.config.user_agent
            for prefix in ("http://", "https://"):
                session.mount(prefix, HTTPAdapter(max_retries=self.retry))
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session


def _timed_out(err: requests.ConnectionError) -> bool:
    """Whether urllib3 gave up on timeouts (requests reports that as a ConnectionError)."""
    reason = err.args[0] if err.args else None
    reason = getattr(reason, "reason", reason)
    return isinstance(reason, ReadTimeoutError) or (
        isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError))


class _BodyTimeout(Exception):
    pass


class _BodyTooLarge(Exception):
    pass
