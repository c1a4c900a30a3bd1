"""A URL that does not parse never reaches any output, whole or in pieces.

Every malformed shape we could think of (no scheme, a typo in the scheme, an unencoded '/',
'@', '#', '?' or space in the password, a bad %XX escape, a broken IPv6 bracket, a port that is
not a number, an HTTP REST URL, keyword/value strings), for both URLs, through every command
that connects, in human and `--json` form by turns (each shape and each command meets both): the secret is in neither stdout nor stderr. Shapes
the drivers' own parsers reject exit 2 naming at most the scheme; shapes they accept ('#' or
'?' in a Postgres password, which libpq reads as part of it) connect and fail on the server,
masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from kvmigrate.model.masking import mask_text, mask_url, url_secrets
from tests.fixtures.faults import Launcher, launcher, note

S = "Sx7leakQ9z"  # the secret planted in every URL; no piece of it may show


def pg_shapes(port: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Malformed (or odd) Postgres URLs -> the exit codes they may end with."""
    at = f"127.0.0.1:{port}/x"
    return {
        "no scheme": (f"kvuser:{S}@{at}", (2,)),
        "one slash": (f"postgresql:/kvuser:{S}@{at}", (2,)),
        "no colon": (f"postgresql//kvuser:{S}@{at}", (2,)),
        "http": (f"http://kvuser:{S}@{at}", (2,)),
        "'/' in password": (f"postgresql://kvuser:ab/cd{S}@{at}", (2,)),
        "'@' in password": (f"postgresql://kvuser:ab@cd{S}@{at}", (2,)),
        "bad %XX": (f"postgresql://kvuser:ab%cd{S}@{at}", (2,)),
        "broken IPv6": (f"postgresql://kvuser:{S}@[127.0.0.1/x", (2,)),
        "port a word": (f"postgresql://kvuser:{S}@127.0.0.1:port/x", (2,)),
        "port too big": (f"postgresql://kvuser:{S}@127.0.0.1:99999/x", (2,)),
        "keyword form": (f"host=127.0.0.1 port={port} password={S} dbname=x", (2,)),
        "bad query": (f"postgresql://kvuser:{S}@{at}?nosuch=1", (2,)),
        "'#' in password": (f"postgresql://kvuser:ab#cd{S}@{at}", (3,)),  # libpq reads it as written
        "'?' in password": (f"postgresql://kvuser:ab?cd{S}@{at}", (3,)),
        "space in password": (f"postgresql://kvuser:ab {S}@{at}", (2,)),
        "password in query": (f"postgresql://kvuser@{at}?password={S}", (3,)),
        "bad sslmode": (f"postgresql://kvuser:{S}@{at}?sslmode=bogus", (2, 3)),
    }


def kv_shapes(port: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    at = f"127.0.0.1:{port}"
    return {
        "no scheme": (f"default:{S}@{at}", (2,)),
        "no colon": (f"rediss//default:{S}@{at}", (2,)),
        "REST https": (f"https://default:{S}@eu1-x.upstash.io", (2,)),
        "'/' in password": (f"redis://:ab/cd{S}@{at}/0", (2,)),
        "'#' in password": (f"redis://default:ab#cd{S}@{at}", (2,)),
        "'?' in password": (f"redis://default:ab?cd{S}@{at}", (2,)),
        "bad %XX": (f"redis://:ab%cd{S}@{at}", (2,)),
        "broken IPv6": (f"redis://:{S}@[127.0.0.1:{port}", (2,)),
        "port a word": (f"redis://:{S}@127.0.0.1:port", (2,)),
        "no host": (f"redis://:{S}@:{port}/0", (2,)),
        # redis-py reads these as written; a server without a password may ignore AUTH
        "'@' in password": (f"redis://:ab@cd{S}@{at}", (0, 2, 3)),
        "lone token": (f"redis://{S}@{at}", (0, 2, 3)),
    }


def commands(tmp: Path) -> list[list[str]]:
    """Every command that connects, with what it needs to get as far as connecting."""
    return [["setup"], ["setup", "--dry-run"], ["doctor"], ["inventory"], ["plan"], ["backfill"], ["rejects"],
            ["verify", "--recheck-delay", "0"], ["dual-write", "--settle", "0"], ["cutover"],
            ["cleanup", "--yes", "--settle", "0", "--archive-dir", str(tmp / "archive")],
            ["restore", str(tmp / "archive")], ["status"], ["seed"], ["rehearse"], ["demo"]]


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Launcher]:
    with launcher({"HOME": str(tmp_path), "KVMIGRATE_CONNECT_RETRIES": "0"}) as run:
        yield run


def _leaks(text: str) -> list[str]:
    pieces = [S, S[:5], S[-5:], "cd" + S[:3]]
    return [p for p in pieces if p in text]


def test_no_malformed_url_shape_shows_its_secret_in_any_command_or_output_form(
        pg_url: str, kv_url: str, runner: Launcher, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    pg_port, kv_port = urlsplit(pg_url).port or 5432, urlsplit(kv_url).port or 6379
    cases = [("--pg-url", name, url, codes, ["--kv-url", kv_url]) for name, (url, codes) in pg_shapes(pg_port).items()]
    cases += [("--kv-url", name, url, codes, ["--pg-url", pg_url]) for name, (url, codes) in kv_shapes(kv_port).items()]
    runs, found, codes_seen = 0, [], []
    # each shape meets every command once, in the human and the JSON form by turns (so every
    # command and every shape is seen in both forms across the grid)
    for n, (option, name, url, codes, partner) in enumerate(cases):
        for i, argv in enumerate(commands(tmp_path)):
            form = ["--json"] if (n + i) % 2 else []
            if argv[0] == "rehearse":  # rehearse takes its database only from its own --pg-url
                argv = [*argv, option, url] if option == "--pg-url" else [*argv, "--pg-url", pg_url]
                done = runner.run(*form, *(partner if option == "--pg-url" else [option, url]), *argv)
            else:
                done = runner.run(*form, option, url, *partner, *argv)
            runs += 1
            leaks = _leaks(done.output)
            if leaks:
                found.append(f"{option} {name}: {' '.join(form + argv)} showed {leaks}")
            if argv[0] in _READS[option]:
                codes_seen.append((option, name, argv[0], done.code, codes))
            elif argv[0] == "doctor":
                assert done.code != 0, done.output
            assert "Traceback" not in done.output, done.output
            if form:
                assert done.stdout.lstrip().startswith("{"), (name, argv, done.output)
    assert not found, found
    # a shape a driver rejects exits 2 before connecting; the accepted ones fail on the server
    wrong = [c for c in codes_seen if c[3] not in c[4]]
    assert not wrong, wrong
    note(request, f"{len(cases)} URL shapes x {len(commands(tmp_path))} commands, human and JSON by turns = {runs} runs: "
         "the secret in none")


#: commands whose exit code is the URL's verdict: they open that connection first or only
_BOTH = ("backfill", "verify")
_READS = {"--pg-url": frozenset({"setup", "rejects", "status", "rehearse", *_BOTH}),
          "--kv-url": frozenset({"inventory", "plan", "seed", *_BOTH})}


@pytest.mark.parametrize("url", [u for u, _ in pg_shapes(5432).values()] + [u for u, _ in kv_shapes(6379).values()])
def test_masking_hides_the_whole_password_of_every_shape(url: str) -> None:
    texts = [mask_url(url), mask_text(f"x {url} y", url_secrets(url)), mask_text(f"x {url!r} y", url_secrets(url))]
    if "://" in url and " " not in url:  # free text is searched for URLs by their scheme, up to a blank
        texts.append(mask_text(f"failed at {url}: oops"))
    for text in texts:
        assert not _leaks(text), text
