"""core.sources.http against real HTTP on 127.0.0.1 (the fake TMDB server).

Locks in: 429 waits for Retry-After (measured) and is capped; repeated 429 gives RateLimitError;
5xx, timeouts, refused connections and invalid JSON are retried with backoff, then a clear
DownloadError; 401 gives AuthError at once and 404 an HttpStatusError at once (no retry); secrets
are redacted in every message, in urllib3's own log records, and no chained exception carries them;
transport retries are urllib3's ``Retry`` mounted on the session and share one attempt budget with
invalid-JSON retries; a body over the size limit fails at once; the rate limiter spaces requests
across threads and ``hold`` pauses them; Retry-After dates parse.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from core.errors import AuthError, DownloadError, RateLimitError
from core.sources.http import (RETRY_STATUSES, HttpClient, HttpConfig, HttpStatusError, PoliteRetry,
                               RateLimiter, describe_url, parse_retry_after, redact)
from tests.fake_tmdb import API_KEY, INVALID_JSON, SLOW, fake_tmdb, status  # noqa: F401

FAST = HttpConfig(requests_per_second=1000, timeout=0.3, max_retries=3, backoff_base=0.01)
GENRES = "/3/genre/movie/list"


def _client(**changes) -> HttpClient:
    return HttpClient(HttpConfig(**{**FAST.__dict__, **changes}), secrets=[API_KEY])


def _genres(client: HttpClient, fake, key: str = API_KEY):
    return client.get_json(f"{fake.api_base}/genre/movie/list", params={"api_key": key})


def test_retry_after_is_waited_before_retrying(fake_tmdb):
    fake_tmdb.fail(GENRES, status(429, retry_after="1"))
    started = time.monotonic()
    data = _genres(_client(), fake_tmdb)
    assert time.monotonic() - started >= 0.95
    first, second = fake_tmdb.requests_to("api", GENRES)
    assert second.time - first.time >= 0.95
    assert data["genres"]


def test_retry_after_is_capped(fake_tmdb):
    fake_tmdb.fail(GENRES, status(429, retry_after="30"))
    started = time.monotonic()
    _genres(_client(max_retry_after=0.2), fake_tmdb)
    assert time.monotonic() - started < 2


def test_repeated_429_gives_rate_limit_error(fake_tmdb):
    fake_tmdb.fail(GENRES, *[status(429, retry_after="0")] * 5)
    with pytest.raises(RateLimitError, match="429"):
        _genres(_client(max_retries=2), fake_tmdb)
    assert len(fake_tmdb.requests_to("api", GENRES)) == 3


def test_server_errors_and_timeouts_and_invalid_json_are_retried(fake_tmdb):
    fake_tmdb.slow_seconds = 1.0
    fake_tmdb.fail(GENRES, status(500), SLOW, INVALID_JSON, status(503))
    data = _genres(_client(max_retries=4), fake_tmdb)
    assert data["genres"]
    assert len(fake_tmdb.requests_to("api", GENRES)) == 5


def test_persistent_server_error_gives_download_error_after_max_retries(fake_tmdb):
    fake_tmdb.fail(GENRES, *[status(500)] * 10)
    with pytest.raises(DownloadError, match=r"HTTP 500.*gave up after 3 attempts"):
        _genres(_client(max_retries=2), fake_tmdb)
    assert len(fake_tmdb.requests_to("api", GENRES)) == 3


def test_invalid_json_gives_clear_error_after_retries(fake_tmdb):
    fake_tmdb.fail(GENRES, *[INVALID_JSON] * 5)
    with pytest.raises(DownloadError, match="invalid JSON"):
        _genres(_client(max_retries=1), fake_tmdb)


def test_unauthorised_raises_auth_error_without_retrying(fake_tmdb):
    with pytest.raises(AuthError, match="401"):
        _genres(_client(), fake_tmdb, key="wrong-key")
    assert len(fake_tmdb.requests_to("api")) == 1


def test_not_found_raises_status_error_without_retrying(fake_tmdb):
    with pytest.raises(HttpStatusError, match="404") as caught:
        _client().get_bytes(f"{fake_tmdb.image_base}/w342/missing.png")
    assert caught.value.status == 404
    assert len(fake_tmdb.requests_to("image")) == 1


def test_refused_connection_is_retried_then_reported():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="connection failed.*gave up after 2 attempts"):
        _client(max_retries=1).get_bytes(f"http://127.0.0.1:{port}/x.jpg")


def test_secrets_never_appear_in_errors_or_their_chain(fake_tmdb):
    fake_tmdb.fail(GENRES, *[status(500)] * 5)
    with pytest.raises(DownloadError) as caught:
        _genres(_client(max_retries=1), fake_tmdb)
    error = caught.value
    assert "api_key=***" in str(error)
    chain = [error, error.__cause__, error.__context__]
    assert not any(API_KEY in repr(e) or API_KEY in str(e) for e in chain if e is not None)


def test_timeout_error_message_is_redacted(fake_tmdb):
    fake_tmdb.slow_seconds = 1.0
    fake_tmdb.fail(GENRES, SLOW, SLOW)
    with pytest.raises(DownloadError, match="timed out") as caught:
        _genres(_client(max_retries=1), fake_tmdb)
    assert API_KEY not in str(caught.value) and caught.value.__context__ is None


def test_redact_hides_secret_values_parameters_and_bearer_tokens():
    text = "GET https://x/3?api_key=abc123&page=2 Authorization: Bearer tok.en and s3cret"
    shown = redact(text, ["s3cret"])
    assert "abc123" not in shown and "tok.en" not in shown and "s3cret" not in shown
    assert "page=2" in shown
    assert describe_url("https://x/3", {"api_key": "abc", "page": 1}) == "https://x/3?api_key=***&page=1"


def test_parse_retry_after_reads_seconds_and_http_dates():
    now = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30)), lambda: now) == 30.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_rate_limiter_spaces_requests_across_threads():
    limiter = RateLimiter(50)
    starts: list[float] = []
    lock = threading.Lock()

    def go() -> None:
        for _ in range(5):
            limiter.wait()
            with lock:
                starts.append(time.monotonic())

    threads = [threading.Thread(target=go) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts.sort()
    assert starts[-1] - starts[0] >= 19 * 0.02 * 0.9


def test_rate_limiter_hold_delays_the_next_request():
    clock = [100.0]
    slept: list[float] = []
    limiter = RateLimiter(10, clock=lambda: clock[0], sleep=slept.append)
    limiter.wait()
    limiter.hold(2.0)
    limiter.wait()
    assert slept == [pytest.approx(2.0)]


def test_invalid_url_fails_at_once_without_retrying():
    slept: list[float] = []
    client = HttpClient(FAST, sleep=slept.append)
    with pytest.raises(DownloadError, match="invalid URL"):
        client.get_bytes("htp://example.org/poster.jpg")
    assert slept == []


def test_sessions_retry_through_urllib3_with_the_configured_policy(fake_tmdb):
    client = _client(max_retries=3)
    _genres(client, fake_tmdb)
    retry = client._session().get_adapter(fake_tmdb.api_base).max_retries
    assert isinstance(retry, PoliteRetry) and retry.limiter is client.limiter
    assert {429, 500, 503} <= set(retry.status_forcelist) == set(RETRY_STATUSES)
    assert retry.allowed_methods == frozenset({"GET"}) and retry.respect_retry_after_header
    assert retry.backoff_factor == 0.01 and retry.raise_on_status is False


def test_transport_and_json_retries_share_one_budget(fake_tmdb):
    fake_tmdb.fail(GENRES, status(500), INVALID_JSON, status(500), INVALID_JSON, INVALID_JSON)
    with pytest.raises(DownloadError, match="invalid JSON.*gave up after 4 attempts"):
        _genres(_client(max_retries=3), fake_tmdb)
    assert len(fake_tmdb.requests_to("api", GENRES)) == 4


def test_body_over_the_size_limit_fails_at_once(fake_tmdb):
    with pytest.raises(DownloadError, match="larger than 50 bytes"):
        _client(max_bytes=50).get_bytes(fake_tmdb.poster_url(100))
    assert len(fake_tmdb.requests_to("image")) == 1


def test_urllib3_log_records_never_carry_the_key(fake_tmdb, caplog):
    fake_tmdb.fail(GENRES, status(500), status(503))
    with caplog.at_level(logging.DEBUG, logger="urllib3"):
        _genres(_client(), fake_tmdb)
    assert any("Retrying" in record.getMessage() or "Incremented" in record.getMessage()
               for record in caplog.records)
    assert not any(API_KEY in record.getMessage() for record in caplog.records)
