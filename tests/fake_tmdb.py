"""A fake TMDB v3 API and image host on 127.0.0.1, for tests of the downloaders.

Two ``ThreadingHTTPServer``s on free ports (the API under ``/3`` and the images under ``/t/p``, so
"the image host never sees the key" is a real host boundary). The API checks auth like TMDB (the
``api_key`` parameter or ``Authorization: Bearer``; otherwise 401 with TMDB's JSON body), pages the
lists, and every request to either host is recorded (host, path, query, headers, time). Faults:

- ``fail(path, *faults)`` queues one-shot faults for the next requests to ``path`` (no query):
  ``status(429, retry_after="1")``, ``status(500)``, ``SLOW``, ``INVALID_JSON``;
- ``bad_posters[movie_id] = "404" | "truncated" | "not_image" | "slow"`` always breaks a poster.
"""
from __future__ import annotations

import io
import json
import math
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

API_KEY = "v3key-0123456789abcdef-SECRET"
READ_TOKEN = "v4token-fedcba9876543210-SECRET"
GENRES = {28: "Action", 12: "Adventure", 16: "Animation", 35: "Comedy", 80: "Crime", 18: "Drama",
          27: "Horror", 878: "Science Fiction", 10749: "Romance"}
AUTH_FAILURE = {"status_code": 7, "status_message": "Invalid API key: You must be granted a valid key.",
                "success": False}
NOT_FOUND = {"status_code": 34, "status_message": "The resource you requested could not be found.",
             "success": False}
SLOW = ("slow",)
INVALID_JSON = ("invalid_json",)


def status(code: int, retry_after: str | None = None) -> tuple:
    return ("status", code, retry_after)


@dataclass(frozen=True)
class Recorded:
    host: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    time: float


def make_movies(count: int = 30, first_id: int = 100) -> list[dict[str, Any]]:
    """TMDB-shaped movie dicts, most popular first, each with a poster and one or two genres."""
    ids = sorted(GENRES)
    movies = []
    for index in range(count):
        id_ = first_id + index
        genre_ids = [ids[index % len(ids)]] + ([ids[(index + 3) % len(ids)]] if index % 2 else [])
        movies.append({
            "id": id_, "title": f"Movie {index}", "original_title": f"Film {index}",
            "release_date": f"{1990 + index % 30}-05-{1 + index % 28:02d}", "genre_ids": genre_ids,
            "poster_path": f"/p{id_}.jpg", "overview": f"Overview of movie {index}.",
            "popularity": 1000.0 - index, "vote_average": round(5 + (index * 7 % 50) / 10, 1),
            "vote_count": 100 + index, "original_language": "en", "adult": False,
        })
    return movies


def poster_jpeg(movie_id: int) -> bytes:
    colour = (movie_id * 37 % 256, movie_id * 91 % 256, movie_id * 53 % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (20, 30), colour).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class FakeTmdb:
    movies: list[dict[str, Any]] = field(default_factory=make_movies)
    genres: dict[int, str] = field(default_factory=lambda: dict(GENRES))
    per_page: int = 20
    api_key: str = API_KEY
    read_token: str = READ_TOKEN
    slow_seconds: float = 1.5
    bad_posters: dict[int, str] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._faults: dict[str, list[tuple]] = {}
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    def start(self) -> "FakeTmdb":
        self._api = self._serve("api")
        self._images = self._serve("image")
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self._api.server_address[1]}/3"

    @property
    def image_base(self) -> str:
        return f"http://127.0.0.1:{self._images.server_address[1]}/t/p"

    def poster_url(self, movie_id: int, size: str = "w342") -> str:
        return f"{self.image_base}/{size}/p{movie_id}.jpg"

    def fail(self, path: str, *faults: tuple) -> None:
        with self._lock:
            self._faults.setdefault(path, []).extend(faults)

    def requests_to(self, host: str, prefix: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.host == host and r.path.startswith(prefix)]

    def poster_fetches(self) -> list[str]:
        return [r.path for r in self.requests_to("image")]

    def _next_fault(self, path: str) -> tuple | None:
        with self._lock:
            queue = self._faults.get(path)
            return queue.pop(0) if queue else None

    def _record(self, host: str, handler: BaseHTTPRequestHandler) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        with self._lock:
            self.requests.append(Recorded(host, parts.path, query, dict(handler.headers.items()),
                                          time.monotonic()))
        return parts.path, query

    def _serve(self, host: str) -> ThreadingHTTPServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path, query = fake._record(host, self)
                answer = fake._answer(host, path, query, self.headers)
                if answer is not None:
                    self._send(*answer)

            def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(code)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        server.handle_error = lambda request, address: None
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        self._servers.append(server)
        return server

    def _answer(self, host: str, path: str, query: dict[str, list[str]],
                headers: Any) -> tuple[int, bytes, dict[str, str]] | None:
        fault = self._next_fault(path)
        if fault == SLOW:
            time.sleep(self.slow_seconds)
        elif fault and fault[0] == "status":
            extra = {"Retry-After": fault[2]} if fault[2] else {}
            return fault[1], b'{"status_message": "fault"}', {"Content-Type": "application/json", **extra}
        if host == "image":
            return self._poster(path)
        if not self._authorised(query, headers):
            return _json(401, AUTH_FAILURE)
        if fault == INVALID_JSON:
            return 200, b'{"page": 1, "results": [', {"Content-Type": "application/json"}
        return self._api_answer(path, query)

    def _authorised(self, query: dict[str, list[str]], headers: Any) -> bool:
        return query.get("api_key") == [self.api_key] or \
            headers.get("Authorization") == f"Bearer {self.read_token}"

    def _api_answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes, dict[str, str]]:
        if path == "/3/genre/movie/list":
            return _json(200, {"genres": [{"id": k, "name": v} for k, v in self.genres.items()]})
        lists = {"/3/movie/popular": lambda: self.movies,
                 "/3/movie/top_rated": lambda: sorted(self.movies, key=lambda m: -m["vote_average"]),
                 "/3/discover/movie": lambda: self._discover(query)}
        if path not in lists:
            return _json(404, NOT_FOUND)
        page = int(query.get("page", ["1"])[0])
        if not 1 <= page <= 500:
            return _json(400, {"status_code": 22, "status_message": "Invalid page.", "success": False})
        movies = lists[path]()
        chunk = movies[(page - 1) * self.per_page: page * self.per_page]
        return _json(200, {"page": page, "results": chunk, "total_results": len(movies),
                           "total_pages": math.ceil(len(movies) / self.per_page)})

    def _discover(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        movies = self.movies
        if "with_genres" in query:
            wanted = {int(g) for g in query["with_genres"][0].split("|")}
            movies = [m for m in movies if wanted & set(m["genre_ids"])]
        low = query.get("primary_release_date.gte", ["0000"])[0]
        high = query.get("primary_release_date.lte", ["9999"])[0]
        movies = [m for m in movies if low <= (m.get("release_date") or "") <= high]
        return sorted(movies, key=lambda m: -m["popularity"])

    def _poster(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        name = path.rsplit("/", 1)[-1]
        movie_id = int(name[1:-4]) if name.startswith("p") and name.endswith(".jpg") \
            and name[1:-4].isdigit() else None
        problem = self.bad_posters.get(movie_id)
        if movie_id is None or problem == "404":
            return 404, b"<html>Not Found</html>", {"Content-Type": "text/html"}
        data = poster_jpeg(movie_id)
        if problem == "truncated":
            data = data[: len(data) // 2]
        elif problem == "not_image":
            data = b"<html>this is not a poster</html>"
        elif problem == "slow":
            time.sleep(self.slow_seconds)
        return 200, data, {"Content-Type": "image/jpeg"}


def _json(code: int, body: Any) -> tuple[int, bytes, dict[str, str]]:
    return code, json.dumps(body).encode("utf-8"), {"Content-Type": "application/json;charset=utf-8"}


def use_fake_tmdb(monkeypatch, server: FakeTmdb, home) -> None:
    """Point the product at ``server`` with the v3 test key, and ``HOME`` (where secrets are looked up) at ``home``."""
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("TMDB_READ_TOKEN", raising=False)
    monkeypatch.setenv("TMDB_API_KEY", API_KEY)
    monkeypatch.setenv("TMDB_API_BASE", server.api_base)
    monkeypatch.setenv("TMDB_IMAGE_BASE", server.image_base)


@pytest.fixture
def fake_tmdb() -> Iterator[FakeTmdb]:
    server = FakeTmdb().start()
    try:
        yield server
    finally:
        server.stop()
