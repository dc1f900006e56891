"""The state store's alert states in memory (watcher.alert_records): a key's only state is kept as itself,
and every state, every key's view and the index of active states read back as the states put."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.types import ACTIVE_STATUSES, AlertState, BalanceKey
from watcher.alert_records import NO_ALERTS, AlertRecords

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
KEYS = [BalanceKey(source, account) for source in ("mc", "other") for account in ("*", "a", "b")]
FINGERPRINTS = ["f1", "f2", "f3"]

states = st.builds(
    lambda key, fingerprint, status, episode: AlertState(fingerprint, f"rule-{fingerprint}", key, status,
                                                         episode, T0),
    st.sampled_from(KEYS),
    st.sampled_from(FINGERPRINTS),
    st.sampled_from(["inactive", "pending", "firing", "resolved"]),
    st.integers(0, 3),
)


def check_against(model: dict[tuple[BalanceKey, str], AlertState], kept: AlertRecords) -> None:
    for key in KEYS:
        expected = {fp: state for (k, fp), state in model.items() if k == key}
        view = kept.view(key)
        assert dict(view) == expected, key
        assert all(view[fp] is state for fp, state in expected.items())
        if not expected:
            assert view is NO_ALERTS
    assert sorted(kept, key=repr) == sorted(model.values(), key=repr)
    active = kept.active()
    assert len(active) == len({(s.key, s.fingerprint) for s in active})  # each once
    assert sorted(active, key=repr) == sorted(
        (s for s in model.values() if s.status in ACTIVE_STATUSES), key=repr
    )


@settings(max_examples=300)
@given(st.lists(states, max_size=40))
def test_states_read_back_as_the_last_put_of_each_key_and_fingerprint(puts: list[AlertState]) -> None:
    """After any sequence of puts (a key's one state replaced, joined by others, states going active and
    inactive), every key's view holds the last state put for each of its fingerprints, the very objects;
    iterating gives every state once; the active index gives exactly the pending and firing ones, each
    once; and records built from the states at once (as a load does) read back the same."""
    kept = AlertRecords()
    model: dict[tuple[BalanceKey, str], AlertState] = {}
    for state in puts:
        kept.put(state)
        model[(state.key, state.fingerprint)] = state
        check_against(model, kept)
    check_against(model, AlertRecords(puts))


def test_a_keys_only_state_is_kept_without_a_dict_of_its_own() -> None:
    """A key with one state holds the state itself (no dict per key); its view is a mapping of it; a
    second fingerprint makes the dict, and the key stays active while either state is."""
    key = KEYS[1]
    kept = AlertRecords([AlertState("f1", "low", key, "firing", 1, T0)])
    assert type(kept._by_key[key]) is AlertState
    assert dict(kept.view(key)) == {"f1": AlertState("f1", "low", key, "firing", 1, T0)}
    kept.put(AlertState("f2", "stale", key, "inactive", 0, T0))
    assert isinstance(kept._by_key[key], dict)
    assert [s.fingerprint for s in kept.active()] == ["f1"]
    kept.put(AlertState("f2", "stale", key, "pending", 0, T0))
    kept.put(AlertState("f1", "low", key, "resolved", 1, T0))
    assert [s.fingerprint for s in kept.active()] == ["f2"]
    kept.put(AlertState("f2", "stale", key, "inactive", 0, T0))
    assert kept.active() == []
