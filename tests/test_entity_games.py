"""The games entity: B's `vibe:games` object and A's finished DM games (pure, no server)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from kvmigrate.engine.batch import OutcomePart, outcome_parts
from kvmigrate.entities.common import MAX_JSON_DEPTH, json_bytes, load_json
from kvmigrate.entities.games import GAMES, game_from_message
from kvmigrate.model.records import Outcome, RawRecord, Reject, Row
from tests.helpers import traced_peak

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def games(value: Any) -> Outcome:
    """The transform's outcome, each state read back from the JSON text it is kept as."""
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    out = GAMES.transform(RawRecord("vibe:games", "string", raw, "", "games"))
    return replace(out, rows=tuple(replace(r, values={**r.values, "state": _stored(r.values["state"])})
                                   for r in out.rows))


def _stored(state: Any) -> Any:
    """A state as Postgres will store it: its JSON text parsed, numbers exact."""
    return None if state is None else load_json(json_bytes(state))


def test_vibe_games_maps_each_game_and_keeps_unmapped_fields_in_state() -> None:
    out = games({
        "g1": {"id": "g1", "type": "tictactoe", "players": ["@Alice", "bob"], "status": "finished",
               "state": {"board": "XXXOO....", "winner": "ALICE"},
               "created_at": "2025-06-01T12:00:00Z", "updated_at": "2025-06-01T12:05:00Z"},
        "g2": {"id": "g2", "type": "hangman", "players": ["carol"], "status": "active",
               "state": {"word": "vibe", "guesses": ["v"]}, "created_at": 1748779200000},
    })
    assert out.reject is None and out.item_rejects == ()
    assert out.rows == (
        Row("game_results", {
            "id": "g1", "game": "tictactoe", "players": ["alice", "bob"], "winner": "alice",
            "state": {"board": "XXXOO....", "winner": "ALICE",
                      "_extra": {"status": "finished", "updated_at": "2025-06-01T12:05:00Z"}},
            "created_at": T0}, 10),
        Row("game_results", {
            "id": "g2", "game": "hangman", "players": ["carol"], "winner": None,
            "state": {"word": "vibe", "guesses": ["v"], "_extra": {"status": "active"}},
            "created_at": T0}, 10),
    )
    assert out.stats == {"handle_normalised": 2}


@pytest.mark.parametrize(("winner", "expected"), [
    ("X", "X"), ("draw", None), ("@Bob", "bob"), ("", None), (None, None), (1, "1"),
    ({"side": "white"}, '{"side":"white"}'),
])
def test_winner_is_a_handle_only_when_it_names_a_player(winner: Any, expected: str | None) -> None:
    out = games({"g": {"type": "tictactoe", "players": ["alice", "bob"], "state": {"winner": winner}}})
    assert out.rows[0].values["winner"] == expected


def test_non_object_state_is_wrapped_with_the_extra_fields() -> None:
    out = games({
        "a": {"type": "wordassociation", "players": ["alice"], "state": ["sun", "moon"], "status": "x"},
        "b": {"type": "wordassociation", "players": ["alice"], "state": "plain"},
        "c": {"type": "wordassociation", "players": ["alice"], "status": "new"},
        "d": {"type": "tictactoe", "players": ["alice"], "state": {"_extra": 1}, "status": "x"},
    })
    assert [r.values["state"] for r in out.rows] == [
        {"value": ["sun", "moon"], "_extra": {"status": "x"}},
        "plain",
        {"_extra": {"status": "new"}},
        {"_extra": {"_extra": 1, "status": "x"}},
    ]
    assert [r.values["created_at"] for r in out.rows] == [None] * 4


def test_a_game_id_that_differs_from_its_key_is_kept() -> None:
    out = games({"k": {"id": "other", "type": "tictactoe", "players": ["alice"]}})
    assert out.rows[0].values["id"] == "k"
    assert out.rows[0].values["state"] == {"_extra": {"id": "other"}}


def test_a_bad_game_is_an_item_reject_labelled_with_its_id_and_the_rest_migrate() -> None:
    ok = {"type": "tictactoe", "players": ["alice", "bob"]}
    out = games({
        "good": ok,
        "no_type": {"players": ["alice"]},
        "no_players": {"type": "tictactoe"},
        "players_text": {"type": "tictactoe", "players": "alice,bob"},
        "bad_handle": {"type": "tictactoe", "players": ["alice", "no spaces!"]},
        "bad_time": {**ok, "created_at": "yesterday"},
        "not_object": [1, 2],
        "": ok,
    })
    assert out.reject is None
    assert [r.values["id"] for r in out.rows] == ["good"]
    assert [(label, r.code) for label, r in out.item_rejects] == [
        ("no_type", "missing_field"), ("no_players", "missing_field"), ("players_text", "wrong_type"),
        ("bad_handle", "invalid_handle"), ("bad_time", "bad_timestamp"), ("not_object", "wrong_json_type"),
        ("", "missing_field"),
    ]
    assert out.item_rejects[0][1] == Reject(
        "missing_field", "vibe:games game 'no_type': has no `type` (the game's name)")


@pytest.mark.parametrize(("raw", "code"), [
    (b"[]", "wrong_json_type"), (b"{nope", "invalid_json"), (b"\xff", "invalid_utf8"),
    (b'{"g": {"type": "a\\u0000b", "players": []}}', "nul_byte"),
])
def test_vibe_games_that_is_not_an_object_is_rejected(raw: bytes, code: str) -> None:
    out = games(raw)
    assert out.reject is not None and out.reject.code == code
    assert out.rows == ()


@pytest.mark.parametrize(("raw", "code"), [
    (b'{"g1": {"type": "tictactoe", "players": ["alice"]}, "g2": {"type": ', "invalid_json"),
    (b'{"g1": {"type": "tictactoe", "players": ["alice"]}, "g2": {"type": "x"} "g3": 1}', "invalid_json"),
    (b'{"g1": {"type": "tictactoe", "players": ["alice"]},}', "invalid_json"),
    (b'{"g1": {"type": "tictactoe", "players": ["alice"], "state": {"w": "a\\u0000"}}}', "nul_byte"),
    (b'{"g1": {"type": "tictactoe", "players": ["alice"], "state": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
     + b"}}", "too_deep"),
    (b'{"g1": {"type": "tictactoe", "players": ["alice"], "state": "caf\xe9"}}', "invalid_utf8"),
])
def test_a_vibe_games_value_bad_in_one_game_is_rejected_whole_as_before(raw: bytes, code: str) -> None:
    """Games are parsed one at a time; a value that is not valid JSON throughout is still one
    reject of the whole key, with the reason the whole value's parse gives."""
    out = games(raw)
    assert out.reject is not None and out.reject.code == code, out.reject
    assert out.rows == ()


def test_games_parsed_one_at_a_time_read_as_the_whole_object_does() -> None:
    """A repeated id keeps its first place and its last game, numbers keep their exact digits,
    and an empty object has no game."""
    raw = (b'{ "g1" : {"type": "chess", "players": ["ann"]},\n "g2": {"type": "go", "players": ["bob"],'
           b' "state": {"score": 0.10, "big": 123456789012345678901234567890, "moves": [[1, 2.5e3]]}},'
           b' "g1": {"type": "tictactoe", "players": ["cat"], "state": {"winner": "Cat"}} }')
    out = games(raw)
    assert out.reject is None
    assert [(r.values["id"], r.values["game"], r.values["players"]) for r in out.rows] == [
        ("g1", "tictactoe", ["cat"]), ("g2", "go", ["bob"])]
    assert out.rows[0].values["winner"] == "cat"
    assert out.rows[1].values["state"] == {"score": Decimal("0.10"), "big": 123456789012345678901234567890,
                                           "moves": [[1, Decimal("2.5e3")]]}
    assert games(b" {} ").rows == ()
    record = RawRecord("vibe:games", "string", raw, "", "games")
    assert GAMES.transform(record) == GAMES.transform(record)  # pure: states kept as text compare by text


def test_a_large_vibe_games_value_is_transformed_in_memory_that_follows_one_game() -> None:
    """11,000 games (3.4 MB of JSON, what a store of a million keys holds) parsed whole took a
    traced peak of 64 MB and kept 27 MB of rows; parsed game by game, states kept as JSON text,
    about 14 MB and 10 MB."""
    value = {f"game_{i}": {"id": f"game_{i}", "type": "tictactoe", "players": ["alice", f"bob{i % 50}"],
                           "state": {"board": ["X", "O", None, "X", None, "O", "X", None, None], "turn": "O",
                                     "winner": "X", "players": {"X": "alice", "O": f"bob{i % 50}"},
                                     "moves": [[0, "X"], [1, "O"], [3, "X"]]},
                           "status": "finished", "created_at": 1748779200000 + i} for i in range(11_000)}
    raw = orjson.dumps(value)
    del value
    out, peak = traced_peak(lambda: GAMES.transform(RawRecord("vibe:games", "string", raw, "", "games")))
    assert len(out.rows) == 11_000 and out.reject is None and not out.item_rejects
    assert peak < 30 * 2**20, peak / 2**20


def _many_games(n: int, **special: dict[str, Any]) -> bytes:
    value: dict[str, Any] = {f"game_{i}": {"id": f"game_{i}", "type": "tictactoe", "players": ["alice", f"bob{i % 50}"],
                                           "state": {"board": ["X", "O", None, "X", None, "O", "X", None, None],
                                                     "winner": "X", "players": {"X": "alice", "O": f"bob{i % 50}"}},
                                           "status": "finished", "created_at": 1748779200000 + i} for i in range(n)}
    value.update(special)
    return orjson.dumps(value)


def test_a_large_vibe_games_value_comes_in_parts_that_together_are_its_outcome() -> None:
    """A backfill loads the rows of a record bigger than a page in parts, so that a store of a
    million keys does not hold vibe:games' 10 MB of rows at once; the parts hold exactly what
    the whole transform does, the last one the item rejects and stats of all."""
    raw = _many_games(2_500, game_9={"type": "chess", "players": "alice"}, game_2400={"players": ["@Bob"]})
    record = RawRecord("vibe:games", "string", raw, "", "games")
    whole = GAMES.transform(record)
    parts = list(outcome_parts(GAMES, record, 1000))
    assert [(p.last, p.earlier_rows, len(p.outcome.rows)) for p in parts] == [
        (False, 0, 999), (False, 999, 1000), (True, 1999, 499)]
    assert [r for p in parts for r in p.outcome.rows] == list(whole.rows)
    assert parts[-1].outcome.item_rejects == whole.item_rejects and len(whole.item_rejects) == 2
    assert parts[-1].outcome.stats == whole.stats
    assert not any(p.outcome.item_rejects or p.outcome.stats for p in parts[:-1])
    assert list(outcome_parts(GAMES, record, 2_500)) == [OutcomePart(whole)]  # not bigger than a part


def test_a_game_that_is_not_json_in_a_late_part_rejects_vibe_games_whole() -> None:
    """A value that is not valid JSON is rejected as a whole (no game of it migrates), wherever
    the bad game is: parts already made must not be loaded."""
    raw = _many_games(2_500).replace(b'"game_2300":{"id"', b'"game_2300":{id"')
    record = RawRecord("vibe:games", "string", raw, "", "games")
    whole = GAMES.transform(record)
    assert whole.reject is not None and whole.reject.code == "invalid_json"
    assert list(outcome_parts(GAMES, record, 1000)) == [OutcomePart(whole)]


def test_a_row_missing_a_required_column_in_a_late_part_rejects_vibe_games_whole() -> None:
    # A schema that makes `winner` required: a game with none rejects the record, as it does whole.
    raw = _many_games(2_500, game_2300={"type": "chess", "players": ["alice"], "state": {}})
    record = RawRecord("vibe:games", "string", raw, "", "games")
    required = {"game_results": lambda values: None if values["winner"] is not None else "winner"}
    assert list(outcome_parts(GAMES, record, 1000, required)) == [OutcomePart(GAMES.transform(record))]
    assert len(list(outcome_parts(GAMES, record, 1000))) == 3


def test_vibe_games_in_parts_holds_one_part_of_rows_at_a_time() -> None:
    """11,000 games: the whole transform's traced peak is about 13 MB (its rows kept); taking
    them in parts of 1,000 rows and dropping each, about 7.6 MB (the games' JSON texts and two
    parts of rows)."""
    record = RawRecord("vibe:games", "string", _many_games(11_000), "", "games")
    whole, whole_peak = traced_peak(lambda: GAMES.transform(record))
    del whole

    def taken() -> int:
        return sum(len(p.outcome.rows) for p in outcome_parts(GAMES, record, 1000))

    rows, peak = traced_peak(taken)
    assert rows == 11_000
    assert peak < 0.75 * whole_peak, (peak / 2**20, whole_peak / 2**20)


def test_vibe_games_of_another_redis_type_is_rejected() -> None:
    out = GAMES.transform(RawRecord("vibe:games", "hash", {b"g": b"{}"}, "", "games"))
    assert out.reject == Reject("wrong_redis_type", "vibe:games is a Redis hash, expected string")


@pytest.mark.parametrize("state", [
    {"winner": "bob", "board": []}, {"gameOver": True}, {"isDraw": True, "winner": None},
])
def test_a_dm_with_a_final_game_state_is_a_game_result(state: dict[str, Any]) -> None:
    payload = {"type": "game", "version": 1, "game": "chess", "state": state, "idempotencyKey": "k1"}
    row = game_from_message("msg_1", "bob", "alice", payload, T0, 40)
    winner = "bob" if state.get("winner") else None
    assert row == Row("game_results", {"id": "dm_msg_1", "game": "chess", "players": ["alice", "bob"],
                                       "winner": winner, "state": state, "created_at": T0}, 40)


def test_a_dm_game_winner_that_is_not_a_player_is_kept_as_written() -> None:
    payload = {"type": "game", "game": "chess", "state": {"winner": "white", "gameOver": True}}
    row = game_from_message("m", "alice", "bob", payload, None, 20)
    assert row is not None and row.values["winner"] == "white" and row.values["created_at"] is None


@pytest.mark.parametrize("payload", [
    {"type": "game", "game": "chess", "state": {"turn": "white", "gameOver": False}},
    {"type": "game", "game": "chess", "state": {"winner": "", "isDraw": False}},
    {"type": "game", "game": "chess", "state": "over"},
    {"type": "game", "game": "", "state": {"winner": "bob"}},
    {"type": "game", "state": {"winner": "bob"}},
    {"type": "handshake", "game": "chess", "state": {"winner": "bob"}},
    None,
    "game",
])
def test_a_dm_without_a_finished_game_is_not_a_game_result(payload: Any) -> None:
    assert game_from_message("m", "alice", "bob", payload, T0, 40) is None


@pytest.mark.parametrize(("state", "expected"), [
    ({"board": list("XXXOO...."), "players": {"X": "alice", "O": "bob"}, "winner": "X", "gameOver": True}, "alice"),
    ({"board": "OOOXX.X..", "players": {"X": "alice", "O": "@Bob"}, "winner": "O"}, "bob"),
    ({"white": "alice", "black": "bob", "winner": "black", "gameOver": True}, "bob"),
    ({"playerX": "bob", "playerO": "alice", "winner": "x"}, "bob"),
    ({"board": "XXXOO....", "players": {"X": "alice", "O": "bob"}}, "alice"),  # no winner field: the line
])
def test_a_winning_symbol_or_colour_becomes_the_winners_handle_from_the_games_own_state(
        state: dict[str, Any], expected: str) -> None:
    out = games({"g": {"type": "tictactoe", "players": ["alice", "bob"], "state": state}})
    assert out.rows[0].values["winner"] == expected
    payload = {"type": "game", "game": "tictactoe", "state": state}
    row = game_from_message("m1", "alice", "bob", payload, T0, 40)
    assert row is not None and row.values["winner"] == expected


def test_a_finished_draw_on_a_full_board_is_a_result_with_no_winner() -> None:
    state = {"board": list("XOXXOOOXX"), "players": {"X": "alice", "O": "bob"}, "turn": "bob"}
    row = game_from_message("m2", "alice", "bob", {"type": "game", "game": "tictactoe", "state": state}, T0, 40)
    assert row is not None and row.values["id"] == "dm_m2" and row.values["winner"] is None
    out = games({"g": {"type": "tictactoe", "players": ["alice", "bob"], "state": state}})
    assert out.rows[0].values["winner"] is None and out.stats == {}


def test_a_board_still_in_play_is_not_a_result_and_an_unmapped_symbol_is_counted() -> None:
    state = {"board": list("XO.X.O..."), "players": {"X": "alice", "O": "bob"}}
    assert game_from_message("m3", "alice", "bob", {"type": "game", "game": "tictactoe", "state": state},
                             T0, 40) is None
    out = games({"g": {"type": "tictactoe", "players": ["alice", "bob"], "state": {"winner": "O"}}})
    assert out.rows[0].values["winner"] == "O" and out.stats == {"winner_unmapped": 1}
