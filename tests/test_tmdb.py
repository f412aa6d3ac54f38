"""core.sources.tmdb against the fake TMDB server on 127.0.0.1.

Locks in: the finished dataset is complete and correct (ids = TMDB ids, files named by id, titles,
genre names, posters decode, metadata.csv and dataset.json) and loads with zero skipped items; bad
posters (404, truncated, not an image) are reported and not saved; genre 10769 is kept as
"Foreign (10769)" and reported; movies without poster or genres are skipped with a reason;
duplicates across pages count once; a download killed mid-way leaves a valid labels.csv, and the
rerun refetches no poster and no list; the v3 key goes only as ``api_key`` to the API host and the
v4 token only in the Authorization header to the API host; 401 gives AuthError; 429 Retry-After is
honoured; 5xx/invalid JSON/slow answers are retried; the key never reaches a file, an exception
or the CLI output; credentials come from the environment or secrets.toml, with a clear error when
absent; discover sends years and pipe-joined genre ids; paging stops at max-movies.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from core.cli.acquire import add_commands
from core.data.datasets import load_dataset
from core.errors import AuthError, PosterGenreError
from core.progress import Progress
from core.sources.http import HttpConfig
from core.data.images import open_rgb
from core.sources.tmdb import TmdbConfig, TmdbCredentials, download_tmdb, load_credentials, parse_years
from tests.fake_tmdb import (API_KEY, INVALID_JSON, READ_TOKEN, SLOW, FakeTmdb, make_movies,
                             status, use_fake_tmdb)

FAST = HttpConfig(requests_per_second=1000, timeout=0.3, max_retries=3, backoff_base=0.01)
KEY = TmdbCredentials(api_key=API_KEY)
TOKEN = TmdbCredentials(read_token=READ_TOKEN)
FOREIGN, NO_POSTER, NO_GENRES, DUPLICATE = 103, 105, 106, 102
BAD = {110: "404", 111: "truncated", 112: "not_image"}


def _catalog() -> list[dict]:
    movies = make_movies(45)
    movies[3]["genre_ids"] = [10769, 28]
    movies[5]["poster_path"] = None
    movies[6]["genre_ids"] = []
    movies.insert(21, dict(movies[2]))
    return movies


@pytest.fixture
def fake():
    server = FakeTmdb(movies=_catalog(), bad_posters=dict(BAD), slow_seconds=1.0).start()
    yield server
    server.stop()


def _download(fake, out, credentials=KEY, progress=None, http_config=FAST, **config):
    config = TmdbConfig(**{"max_movies": 40, **config})
    return download_tmdb(out, config, credentials=credentials, api_base=fake.api_base,
                         image_base=fake.image_base, http_config=http_config, progress=progress)


def _labels(out: Path) -> dict[str, dict]:
    with open(out / "labels.csv", encoding="utf-8") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def _expected_ids(max_movies: int = 40) -> set[str]:
    unique = {m["id"]: m for m in reversed(_catalog())}
    usable = [i for i, m in sorted(unique.items()) if m["poster_path"] and m["genre_ids"]]
    return {str(i) for i in usable[:max_movies]} - {str(i) for i in BAD}


def test_download_builds_a_complete_correct_dataset(fake, tmp_path):
    out = tmp_path / "tmdb"
    result = _download(fake, out)
    dataset, report = load_dataset(out)
    assert report.skipped == []
    assert set(dataset.ids) == _expected_ids() and result.n_saved == len(dataset) == 37
    assert sorted(p.name for p in (out / "posters").iterdir()) == sorted(f"{i}.jpg" for i in dataset.ids)
    labels = _labels(out)
    assert labels["101"] == {"id": "101", "title": "Movie 1", "genres": "Animation|Action"}
    assert labels[str(FOREIGN)]["genres"] == "Foreign (10769)|Action"
    for path in dataset.paths:
        assert open_rgb(path).size == (20, 30)


def test_bad_posters_are_reported_and_not_saved(fake, tmp_path):
    result = _download(fake, tmp_path / "tmdb")
    reasons = {s.id: s.reason for s in result.skipped}
    assert "404" in reasons["110"] and "truncated" in reasons["111"]
    assert "not an image" in reasons["112"]
    assert not any((tmp_path / "tmdb" / "posters").glob("11[012].*"))
    failures = (tmp_path / "tmdb" / "failures.csv").read_text()
    assert all(id_ in failures for id_ in ("110", "111", "112"))


def test_movies_without_poster_or_genres_are_skipped_with_reason(fake, tmp_path):
    result = _download(fake, tmp_path / "tmdb")
    reasons = {s.id: s.reason for s in result.skipped}
    assert "no poster" in reasons[str(NO_POSTER)] and "no genres" in reasons[str(NO_GENRES)]
    assert any("listed twice" in note for note in result.notes)


def test_retired_genre_is_kept_under_a_clear_name_and_reported(fake, tmp_path):
    result = _download(fake, tmp_path / "tmdb")
    assert result.unknown_genres == {10769: "Foreign (10769)"}
    assert any("10769" in note for note in result.notes)
    info = json.loads((tmp_path / "tmdb" / "dataset.json").read_text())
    assert info["unknown_genres"] == {"10769": "Foreign (10769)"}


def test_metadata_and_info_describe_the_source(fake, tmp_path):
    out = tmp_path / "tmdb"
    _download(fake, out)
    with open(out / "metadata.csv", encoding="utf-8") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    row = rows["101"]
    assert (row["tmdb_id"], row["title"], row["original_title"]) == ("101", "Movie 1", "Film 1")
    assert (row["year"], row["genre_ids"], row["genres"]) == ("1991", "16|28", "Animation|Action")
    assert row["poster_path"] == "/p101.jpg" and row["vote_count"] == "101"
    assert set(rows) == set(_labels(out))
    info = json.loads((out / "dataset.json").read_text())
    assert (info["source"], info["synthetic"], info["name"]) == ("tmdb", False, "tmdb")
    assert info["parameters"]["list"] == "popular" and info["parameters"]["max_movies"] == 40


def test_killed_download_keeps_valid_labels_and_resumes_without_refetching(fake, tmp_path):
    out = tmp_path / "tmdb"

    def kill_after_ten(progress: Progress) -> None:
        if progress.phase == "posters" and progress.done >= 10:
            raise KeyboardInterrupt

    paced = HttpConfig(requests_per_second=100, timeout=0.3, max_retries=3, backoff_base=0.01)
    with pytest.raises(KeyboardInterrupt):
        _download(fake, out, progress=kill_after_ten, http_config=paced, batch_size=4, workers=2)
    partial, report = load_dataset(out)
    assert report.skipped == [] and 7 <= len(partial) < 37
    api_calls = len(fake.requests_to("api"))

    result = _download(fake, out, batch_size=4, workers=2)
    fetched = Counter(fake.poster_fetches())
    good = {p: n for p, n in fetched.items() if not any(f"p{i}." in p for i in BAD)}
    assert max(good.values()) == 1
    assert result.n_reused == len(partial) and result.n_saved == 37
    assert len(fake.requests_to("api")) == api_calls
    dataset, report = load_dataset(out)
    assert report.skipped == [] and set(dataset.ids) == _expected_ids()


def test_rerun_on_a_complete_folder_fetches_no_posters(fake, tmp_path):
    _download(fake, tmp_path / "tmdb")
    before = len(fake.poster_fetches())
    result = _download(fake, tmp_path / "tmdb")
    new = fake.poster_fetches()[before:]
    assert all(any(f"p{i}." in p for i in BAD) for p in new)
    assert result.n_downloaded == 0 and result.n_reused == 37


def test_corrupt_existing_poster_is_fetched_again(fake, tmp_path):
    out = tmp_path / "tmdb"
    _download(fake, out)
    (out / "posters" / "100.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = _download(fake, out)
    assert result.n_downloaded == 1 and open_rgb(out / "posters" / "100.jpg")


def test_api_key_goes_only_as_query_parameter_to_the_api_host(fake, tmp_path):
    _download(fake, tmp_path / "tmdb", max_movies=10)
    for request in fake.requests_to("api"):
        assert request.query["api_key"] == [API_KEY]
        assert "Authorization" not in request.headers
        assert API_KEY not in json.dumps(request.headers) + request.path
    images = fake.requests_to("image")
    assert len(images) == 10
    for request in images:
        assert "Authorization" not in request.headers and "api_key" not in request.query
        assert API_KEY not in json.dumps([request.headers, request.query]) + request.path


def test_read_token_goes_only_in_the_authorization_header_to_the_api_host(fake, tmp_path):
    _download(fake, tmp_path / "tmdb", credentials=TOKEN, max_movies=10)
    for request in fake.requests_to("api"):
        assert request.headers["Authorization"] == f"Bearer {READ_TOKEN}"
        assert "api_key" not in request.query and READ_TOKEN not in json.dumps(request.query)
    for request in fake.requests_to("image"):
        assert READ_TOKEN not in json.dumps([request.headers, request.query]) + request.path


def test_key_never_reaches_any_output_file(fake, tmp_path):
    out = tmp_path / "tmdb"
    _download(fake, out)
    for path in out.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


def test_rejected_key_gives_auth_error_without_the_key(fake, tmp_path):
    wrong = TmdbCredentials(api_key="wrong-" + API_KEY)
    with pytest.raises(AuthError, match=r"TMDB rejected the API key \(401\)") as caught:
        _download(fake, tmp_path / "tmdb", credentials=wrong)
    assert "TMDB_READ_TOKEN" in caught.value.hint
    assert API_KEY not in str(caught.value) and API_KEY not in repr(caught.value.__context__)


def test_rate_limit_answer_is_waited_out(fake, tmp_path):
    fake.fail("/3/movie/popular", status(429, retry_after="1"))
    result = _download(fake, tmp_path / "tmdb", max_movies=5)
    first, second = fake.requests_to("api", "/3/movie/popular")[:2]
    assert second.time - first.time >= 0.95 and result.n_saved == 5


def test_server_errors_invalid_json_and_slow_answers_are_retried(fake, tmp_path):
    fake.fail("/3/genre/movie/list", status(500), INVALID_JSON)
    fake.fail("/3/movie/popular", SLOW, status(502))
    fake.fail("/t/p/w342/p100.jpg", status(503), SLOW)
    result = _download(fake, tmp_path / "tmdb", max_movies=5)
    assert result.n_saved == 5
    assert len(fake.requests_to("api", "/3/genre/movie/list")) == 3
    assert fake.poster_fetches().count("/t/p/w342/p100.jpg") == 3


def test_slow_poster_is_reported_after_retries(fake, tmp_path):
    fake.bad_posters[100] = "slow"
    result = _download(fake, tmp_path / "tmdb", max_movies=3)
    assert "timed out" in {s.id: s.reason for s in result.skipped}["100"]
    assert result.n_saved == 2


def test_paging_stops_at_max_movies(fake, tmp_path):
    result = _download(fake, tmp_path / "tmdb", max_movies=5)
    pages = [r.query["page"] for r in fake.requests_to("api", "/3/movie/popular")]
    assert pages == [["1"]] and result.n_saved == 5


def test_paging_stops_at_the_last_page(fake, tmp_path):
    result = _download(fake, tmp_path / "tmdb", max_movies=500, list_name="top_rated")
    pages = [r.query["page"][0] for r in fake.requests_to("api", "/3/movie/top_rated")]
    assert pages == ["1", "2", "3"] and result.n_saved == 45 - 2 - len(BAD)


def test_discover_sends_years_and_pipe_joined_genre_ids(fake, tmp_path):
    out = tmp_path / "tmdb"
    result = _download(fake, out, list_name="discover", years=(1995, 2000),
                       genres=("Action", "horror"))
    query = fake.requests_to("api", "/3/discover/movie")[0].query
    assert query["with_genres"] == ["28|27"] and query["sort_by"] == ["popularity.desc"]
    assert query["primary_release_date.gte"] == ["1995-01-01"]
    assert query["primary_release_date.lte"] == ["2000-12-31"]
    with open(out / "metadata.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and result.n_saved == len(rows)
    assert all(1995 <= int(r["year"]) <= 2000 and {"Action", "Horror"} & set(r["genres"].split("|"))
               for r in rows)


def test_unknown_genre_name_is_refused_with_the_choices(fake, tmp_path):
    with pytest.raises(PosterGenreError, match="no genre named 'Westerns'") as caught:
        _download(fake, tmp_path / "tmdb", list_name="discover", genres=("Westerns",))
    assert "Science Fiction" in caught.value.hint


def test_filters_on_a_non_discover_list_are_refused(fake, tmp_path):
    with pytest.raises(PosterGenreError, match="discover"):
        _download(fake, tmp_path / "tmdb", list_name="popular", years=(1990, 2000))


def test_parse_years_reads_ranges_and_single_years():
    assert parse_years("1990-2017") == (1990, 2017) and parse_years("2001") == (2001, 2001)
    with pytest.raises(PosterGenreError):
        parse_years("2017-1990")


def test_credentials_come_from_the_environment_first(tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('TMDB_API_KEY = "from-file"\n')
    found = load_credentials({"TMDB_API_KEY": "from-env"}, [secrets])
    assert found.api_key == "from-env" and "from-env" not in repr(found)


def test_credentials_come_from_secrets_toml(tmp_path):
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    second.write_text('[tmdb]\nread_token = "tok"\n')
    assert load_credentials({}, [first, second]) == TmdbCredentials(read_token="tok")


def test_a_v4_token_given_as_api_key_is_used_as_a_token():
    found = load_credentials({"TMDB_API_KEY": "eyJhbGciOiJIUzI1NiJ9.e30.sig"}, [])
    assert found.read_token and not found.api_key


def test_missing_credentials_explain_how_to_get_a_key(tmp_path):
    with pytest.raises(AuthError, match="no TMDB credentials") as caught:
        load_credentials({}, [tmp_path / "missing.toml"])
    assert "TMDB_API_KEY" in caught.value.hint and "themoviedb.org" in caught.value.hint


def test_broken_secrets_file_is_reported_without_its_content(tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('TMDB_API_KEY = "unterminated-secret-value\n')
    with pytest.raises(AuthError, match="cannot read TMDB credentials") as caught:
        load_credentials({}, [secrets])
    assert "unterminated-secret-value" not in str(caught.value)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def cli_env(fake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    use_fake_tmdb(monkeypatch, fake, tmp_path)
    return monkeypatch


def test_cli_prints_progress_summary_and_every_skip_but_never_the_key(cli_env, tmp_path, capsys):
    code = _cli(["download-tmdb", "--out", str(tmp_path / "cli"), "--max-movies", "40",
                 "--rate", "1000"])
    captured = capsys.readouterr()
    assert code == 0
    assert "[40/40]" in captured.err and "3 failed — 37 saved" in captured.err
    assert "saved 37 posters" in captured.out
    assert "110: HTTP 404" in captured.out and "105: 'Movie 5' has no poster" in captured.out
    assert "Foreign (10769)" in captured.out
    assert API_KEY not in captured.out + captured.err
    assert load_dataset(tmp_path / "cli")[1].skipped == []


def test_cli_rejected_key_raises_one_clear_error(cli_env, tmp_path, capsys):
    cli_env.setenv("TMDB_API_KEY", "bad-" + API_KEY)
    with pytest.raises(AuthError) as caught:
        _cli(["download-tmdb", "--out", str(tmp_path / "cli"), "--max-movies", "5"])
    captured = capsys.readouterr()
    assert API_KEY not in str(caught.value) + captured.out + captured.err


def test_cli_interrupt_says_how_to_resume(cli_env, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("core.cli.acquire.download_tmdb", interrupted)
    assert _cli(["download-tmdb", "--out", str(tmp_path / "cli"), "--max-movies", "5"]) == 130
    assert "run the same command again" in capsys.readouterr().err
