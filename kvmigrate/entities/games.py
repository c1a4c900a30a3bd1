"""Game results: B's `vibe:games` object → one `game_results` row per game; A's DM games are
found by the messages entity, which calls `game_from_message` for every message it migrates.

Rules (README, "Data rules"):
* `vibe:games` is one JSON object gameId → game; the row id is the object key, `game` ← `type`,
  `players` ← the normalised handles in stored order, `state` ← the game's `state`,
  `created_at` ← `created_at` (NULL when absent). A bad game is an item reject labelled with its
  id; the other games migrate.
* `winner` is the winning player's handle, taken from the game's own state: `state.winner` when
  it names one of the players; a symbol or colour (`X`, `O`, `white`, `black`) is mapped through
  the state's own map of it (`state.players.X`, `state.white`, `state.playerX`, …) when that
  names a player; a tic-tac-toe board with three in a row gives the winning symbol when
  `winner` is missing. A draw has winner NULL: `isDraw`, a `winner` of "draw"/"tie", or a full
  board with no line. Anything else is kept as written (stat `winner_unmapped`); a winner that
  is not text is stored as its JSON text.
* Fields with no column (`status`, `updated_at`, a game `id` that differs from its key, …) are
  kept in `state["_extra"]`; a state that is not an object is wrapped as `{"value": state,
  "_extra": …}` (a missing state becomes `{"_extra": …}`); a state that already has `_extra`
  keeps it as `_extra._extra`.
* A DM message whose `payload` is `{type: "game", game, state}` with a final state (`winner` set,
  `gameOver` or `isDraw` true, or a full or won tic-tac-toe board) is a result: id `dm_<message id>`, players = the two handles
  sorted, `state` = the payload's state as sent, `created_at` = the message's time. A payload
  with no `game` name, or a state that is not final, is not a result (the message keeps it).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from kvmigrate.entities import common as c
from kvmigrate.entities.base import EntityBase, Family, TableSpec
from kvmigrate.model.records import Outcome, RawRecord, Reject, Row

TABLE = TableSpec("game_results", "id", ("id", "game", "players", "winner", "state", "created_at"),
                  json_columns=("state",))
_MAPPED = frozenset({"id", "type", "players", "state", "created_at", "createdAt"})


class Games(EntityBase):
    name = "games"
    load_order = 60
    families = (Family("games", "vibe:games", frozenset({"string"}), rank=10, many_rows=True),)
    tables = (TABLE,)

    def from_games(self, record: RawRecord) -> Outcome:
        """One row per game. The games are parsed one at a time, each state kept as its JSON
        text, so memory follows one game, not the whole object (3.3 MB in a store of a million
        keys, about 17 times that once parsed); a value that is not plainly a JSON object is
        parsed whole, for the error that names what is wrong with it."""
        if not isinstance(record.value, bytes):
            raise c.Bad("wrong_redis_type", f"unexpected value of type {type(record.value).__name__}")
        members = c.object_members(record.value)
        if members is not None:
            try:
                return self._games(record, ((gid, c.load_json(text)) for gid, text in members.items()))
            except c.Bad:
                pass  # a game that is not valid JSON: the whole value is, as before, rejected below
        return self._games(record, iter(c.checked_object(record.value).items()))

    def transform_parts(self, record: RawRecord, rows: int) -> Iterator[Outcome]:
        """`vibe:games` in parts of `rows` games, in the object's order: each part's rows, item
        rejects and stats (one part when it holds no more). A game that is not valid JSON
        rejects the whole value: that part is then `transform`'s outcome, the record's whole
        (see EntityBase.transform_parts). Any other record, or an empty object, comes whole."""
        members = self._members(record)
        if not members:
            yield self.transform(record)
            return
        ids = list(members)
        for start in range(0, len(ids), rows):
            try:
                part = self._games(record, ((gid, c.load_json(members[gid])) for gid in ids[start:start + rows]))
            except Exception:  # noqa: BLE001 - transformed whole, the record gets its reject (or its bug) reported
                yield self.transform(record)
                return
            yield part

    def _members(self, record: RawRecord) -> dict[str, bytes] | None:
        """The games of a `vibe:games` string, each as its JSON text (see from_games), or None."""
        if record.family != "games" or record.name_problem or not isinstance(record.value, bytes):
            return None
        return c.object_members(record.value) if record.redis_type == "string" else None

    def _games(self, record: RawRecord, games: Iterator[tuple[str, Any]]) -> Outcome:
        rank = self.family("games").rank
        rows: list[Row] = []
        item_rejects: list[tuple[str, Reject]] = []
        normalised = unmapped = 0
        for game_id, game in games:
            try:
                values, changed = game_row(game_id, game)
            except c.Bad as exc:
                raw = c.dumps(game)
                item_rejects.append((game_id, Reject(exc.code, f"{record.key} game {game_id!r}: {exc}", raw)))
                continue
            normalised += changed
            unmapped += values["winner"] is not None and values["winner"] not in values["players"]
            if values["state"] is not None:  # as str: orjson's bytes keep a 4 KB buffer each
                values["state"] = c.JsonText(c.json_bytes(values["state"]).decode())
            rows.append(Row(TABLE.name, values, rank))
        stats = {k: n for k, n in (("handle_normalised", normalised), ("winner_unmapped", unmapped)) if n}
        return Outcome(rows=tuple(rows), item_rejects=tuple(item_rejects), stats=stats)


def game_row(game_id: str, game: Any) -> tuple[dict[str, Any], int]:
    """The `game_results` row for one game of `vibe:games` (and how many handles normalising
    changed), or raise Bad."""
    if not game_id:
        raise c.Bad("missing_field", "the game id (the object key) is empty")
    if not isinstance(game, dict):
        raise c.Bad("wrong_json_type", f"is JSON {type(game).__name__}, expected an object")
    kind = game.get("type")
    if kind is None or kind == "":
        raise c.Bad("missing_field", "has no `type` (the game's name)")
    if not isinstance(kind, str):
        raise c.Bad("wrong_type", f"`type` is {type(kind).__name__}, expected text")
    raw_players = game.get("players")
    if raw_players is None:
        raise c.Bad("missing_field", "has no `players`")
    if not isinstance(raw_players, list):
        raise c.Bad("wrong_type", f"`players` is {type(raw_players).__name__}, expected a list")
    players = [c.handle(p, what="player") for p in raw_players]
    changed = sum(1 for raw, h in zip(raw_players, players, strict=True) if raw != h)
    state = game.get("state")
    winner = winner_of(state, players)
    raw_winner = state.get("winner") if isinstance(state, dict) else None
    if isinstance(raw_winner, str) and winner == _player(raw_winner, players) and winner != raw_winner:
        changed += 1
    extra = {k: v for k, v in game.items() if k not in _MAPPED}
    if game.get("id") not in (None, game_id):
        extra["id"] = game["id"]
    created = game.get("created_at", game.get("createdAt"))
    return {
        "id": game_id,
        "game": kind,
        "players": players,
        "winner": winner,
        "state": with_extra(state, extra),
        "created_at": c.optional_timestamp(created, what="created_at"),
    }, changed


def game_from_message(msg_id: str, from_handle: str, to_handle: str, payload: Any,
                      created_at: datetime | None, rank: int) -> Row | None:
    """The `game_results` row for a DM whose payload carries a finished game, else None.

    Handles are expected normalised already (the messages entity does it). Never raises."""
    if not isinstance(payload, dict) or payload.get("type") != "game":
        return None
    game, state = payload.get("game"), payload.get("state")
    if not isinstance(game, str) or not game or not is_final(state):
        return None
    players = sorted([from_handle, to_handle])
    values = {"id": f"dm_{msg_id}", "game": game, "players": players,
              "winner": winner_of(state, players), "state": state, "created_at": created_at}
    return Row(TABLE.name, values, rank)


_DRAWN = frozenset({"draw", "tie", "stalemate"})
_LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))


def is_final(state: Any) -> bool:
    """A game state is final when it names a winner, says `gameOver` / `isDraw`, or holds a
    tic-tac-toe board that is won or full."""
    if not isinstance(state, dict):
        return False
    if state.get("winner") not in (None, "") or state.get("gameOver") is True or state.get("isDraw") is True:
        return True
    line, full = board_result(state.get("board"))
    return line is not None or full


def board_result(board: Any) -> tuple[str | None, bool]:
    """(the symbol with three in a row, whether every cell is taken) of a 3x3 board stored as
    a list of nine cells or a nine-character string ("" / "." / " " / null are empty cells);
    (None, False) for anything else."""
    if isinstance(board, str) and len(board) == 9:
        cells: list[Any] = list(board)
    elif isinstance(board, list) and len(board) == 9:
        cells = board
    else:
        return None, False
    marks = [c.upper() if isinstance(c, str) and c.strip() not in ("", ".", "-") else None for c in cells]
    line = next((marks[i] for i, j, k in _LINES if marks[i] and marks[i] == marks[j] == marks[k]), None)
    return line, all(marks)


def winner_of(state: Any, players: list[str]) -> str | None:
    """The winner's handle (see the module rules): None for no winner or a draw; a symbol or
    colour mapped through the state's own map; else the value as written (JSON text if not text)."""
    if not isinstance(state, dict):
        return None
    raw = state.get("winner")
    if raw is None or raw == "":
        if state.get("isDraw") is True:
            return None
        raw = board_result(state.get("board"))[0]
        if raw is None:
            return None
    if not isinstance(raw, str):
        return c.json_bytes(raw).decode()
    if raw.strip().lower() in _DRAWN:
        return None
    named = _player(raw, players)
    if named is not None:
        return named
    for mapped in _symbol_names(state, raw):
        named = _player(mapped, players)
        if named is not None:
            return named
    return raw


def winner_unmapped(state: Any, players: list[str]) -> bool:
    """Whether the state names a winner that is neither a player nor mapped to one."""
    winner = winner_of(state, players)
    return winner is not None and winner not in players


def _player(raw: Any, players: list[str]) -> str | None:
    """`raw` normalised, when it is one of `players`."""
    try:
        normalised = c.handle(raw)
    except c.Bad:
        return None
    return normalised if normalised in players else None


def _symbol_names(state: dict[str, Any], symbol: str) -> list[Any]:
    """What the state itself says `symbol` stands for: `players[symbol]`, `state[symbol]`,
    `player<symbol>`, `<symbol>Player`, in every case the symbol is written in."""
    out: list[Any] = []
    for sym in dict.fromkeys((symbol, symbol.upper(), symbol.lower())):
        roster = state.get("players")
        if isinstance(roster, dict):
            out.append(roster.get(sym))
        out.extend(state.get(k) for k in (sym, f"player{sym}", f"player{sym.upper()}", f"{sym.lower()}Player"))
    return [v for v in out if isinstance(v, str)]


def with_extra(obj: Any, extra: dict[str, Any]) -> Any:
    """`obj` with the unmapped fields `extra` under `_extra` (see the module rules)."""
    if not extra:
        return obj
    if obj is None:
        return {"_extra": extra}
    if not isinstance(obj, dict):
        return {"value": obj, "_extra": extra}
    if "_extra" in obj:
        extra = {"_extra": obj["_extra"], **extra}
    return {**obj, "_extra": extra}


GAMES = Games()
