"""The state store's alert states in memory (watcher.alert_records): a key's only state is kept as itself
(or packed), and every state, every key's view and the index of active states read back as the states
put."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.types import ACTIVE_STATUSES, AlertState, BalanceKey
from watcher import alert_records
from watcher.alert_records import NO_ALERTS, AlertRecords
from watcher.hot_keys import HotKeys
from watcher.packed import ON_DISK

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
KEYS = [BalanceKey(source, account) for source in ("mc", "other") for account in ("*", "a", "b")]
FINGERPRINTS = ["f1", "f2", "f3"]

states = st.builds(
    lambda key, fingerprint, status, episode, severity: AlertState(
        fingerprint, f"rule-{fingerprint}", key, status, episode, T0, severity=severity
    ),
    st.sampled_from(KEYS),
    st.sampled_from(FINGERPRINTS),
    st.sampled_from(["inactive", "pending", "firing", "resolved"]),
    st.integers(0, 3),
    st.sampled_from([None, "warning", "critical"]),  # a rule's severity may change across a reload
)


def check_against(
    model: dict[tuple[BalanceKey, str], AlertState], kept: AlertRecords, same_objects: bool = True
) -> None:
    for key in KEYS:
        expected = {fp: state for (k, fp), state in model.items() if k == key}
        view = kept.view(key)
        assert dict(view) == expected, key
        assert not same_objects or all(view[fp] is state for fp, state in expected.items())
        if not expected:
            assert view is NO_ALERTS
    assert sorted(kept, key=repr) == sorted(model.values(), key=repr)
    active = list(kept.active())
    assert len(active) == len({(s.key, s.fingerprint) for s in active})  # each once
    assert sorted(active, key=repr) == sorted(
        (s for s in model.values() if s.status in ACTIVE_STATUSES), key=repr
    )
    check_active_index(model, kept)


def check_active_index(model: dict[tuple[BalanceKey, str], AlertState], kept: AlertRecords) -> None:
    """The keys with an active state and the counts by rule, severity and status, as kept without a walk,
    are those of the states last put."""
    active = [s for s in model.values() if s.status in ACTIVE_STATUSES]
    assert set(kept.active_keys()) == {s.key for s in active}
    assert dict(kept.counts()) == Counter((s.rule, s.severity, s.status) for s in active)


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
    assert list(kept.active()) == []


def test_a_packed_state_joined_by_another_fingerprint_makes_the_dict() -> None:
    """A second fingerprint put over a packed state keeps both, unpacked, in the key's dict."""
    key = KEYS[1]
    first = AlertState("f1", "low", key, "firing", 1, T0)
    kept = AlertRecords([first])
    kept.pack(key)
    assert type(kept._by_key[key]) is bytes
    second = AlertState("f2", "stale", key, "pending", 0, T0)
    kept.put(second)
    assert kept._by_key[key] == {"f1": first, "f2": second}
    assert sorted(kept.active(), key=repr) == sorted([first, second], key=repr)


def test_the_walk_over_active_states_unpacks_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """`active` hands out packed states one by one, each unpacked for its turn: a walk over 100,000 of them
    (the daemon's firing count after every round) never holds them all at once."""
    keys = [BalanceKey("mc", f"acct-{n}") for n in range(50)]
    kept = AlertRecords(AlertState("f1", "stale", key, "firing", 1, T0) for key in keys)
    for key in keys:
        kept.pack(key)
    unpacked: list[BalanceKey] = []
    unpack = alert_records.unpack_alert

    def counting(key: BalanceKey, held: bytes) -> AlertState:
        unpacked.append(key)
        return unpack(key, held)

    monkeypatch.setattr(alert_records, "unpack_alert", counting)
    walk = kept.active()
    assert next(walk).key == keys[0]
    assert unpacked == [keys[0]]
    assert [state.key for state in walk] == keys[1:]
    assert unpacked == keys
    assert all(type(held) is bytes for held in kept._by_key.values()), "the walk leaves them packed"


@settings(max_examples=300)
@given(st.lists(states | st.tuples(st.sampled_from(["pack", "let_go", "view"]), st.sampled_from(KEYS)),
                max_size=40))
def test_states_packed_or_let_go_read_back_the_same(steps: list[AlertState | tuple[str, BalanceKey]]) -> None:
    """Packing or letting go of any key at any moment (each put durable at once) changes nothing a reader
    sees: views, puts over a key packed or on disk (which read its other states first), the walk of
    every state and the active index give states equal to the last put. The walks read copies and leave
    each key as it was; a view keeps what it read and counts the key as hot. A key with an active state
    is let go too, and its key and counts stay in the active index."""
    disk: dict[tuple[BalanceKey, str], AlertState] = {}

    def load(key: BalanceKey) -> list[AlertState]:
        return [state for (k, _), state in disk.items() if k == key]

    hot = HotKeys(0)
    kept = AlertRecords(hot=hot, load=load)
    for step in steps:
        if isinstance(step, AlertState):
            kept.put(step)
            disk[(step.key, step.fingerprint)] = step
        elif step[0] == "pack":
            kept.pack(step[1])
        elif step[0] == "let_go":
            kept.let_go(step[1])
            check_active_index(disk, kept)
        else:
            hot.overflow()
            away = {k for k, held in kept._by_key.items() if type(held) is bytes or held is ON_DISK}
            check_against(disk, kept, same_objects=False)  # views every key: each is read back
            assert not any(type(held) is bytes or held is ON_DISK for held in kept._by_key.values())
            assert set(hot.overflow()) == away
        held = dict(kept._by_key)
        assert sorted(kept, key=repr) == sorted(disk.values(), key=repr)
        assert sorted(kept.active(), key=repr) == sorted(
            (s for s in disk.values() if s.status in ACTIVE_STATUSES), key=repr
        )
        assert all(kept._by_key[k] is v for k, v in held.items()), "the walks change nothing"
    check_against(disk, kept, same_objects=False)
