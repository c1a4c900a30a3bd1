"""The Bloom filter of keys a run has seen (kvmigrate.model.seen): a key noted is always found,
however many filters it has grown into; a key never noted is found rarely."""

from __future__ import annotations

from kvmigrate.model.seen import FIRST_FILTER, SeenKeys


def test_every_key_noted_is_found_again_across_grown_filters_and_few_others_are() -> None:
    seen = SeenKeys()
    pages = [[f"msg:{p}:{i}" for i in range(10_000)] for p in range(3 * FIRST_FILTER // 10_000)]
    for page in pages:
        assert len(seen.seen_before(page)) < 300  # new keys: about 1% false "maybe"
    assert len(seen._filters) > 1  # the keys outgrew the first filter
    for page in pages:  # noted in the first filter or a later one: all found, by both probes
        assert seen.seen_before(page) == page
        assert all(seen.maybe(key) for key in page[::97])
    fresh = [f"thread:{i}" for i in range(20_000)]
    assert sum(seen.maybe(key) for key in fresh) < 600


def test_a_key_repeated_in_one_call_is_not_seen_before_that_call() -> None:
    seen = SeenKeys()
    assert seen.seen_before(["a", "b", "a"]) == []
    assert seen.seen_before(["a", "c"]) == ["a"]
