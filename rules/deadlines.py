"""When time alone can next change a key's alerts, so that the alert clock visits only the keys that are
due instead of every active alert and every stale subject at every tick. Pure: `now` is an argument.

A firing alert that nothing withholds and that sends no reminders stays as it is, whatever the time, until
an observation, a poll or a rules reload moves it: a tick need not look at it. What time alone does move
(`tick` in `rules.timeline`): a pending alert's `for` elapsing, a subject turning stale for a rule, a
reminder falling due, a mute window opening or closing. `next_due` gives the first of those moments for
one key; `TickSchedule` keeps them for every key, with the keys whose states or freshness changed since
(which are due at once), and says which keys a tick must visit.

A key's alerts may also depend on another key's: an alert withheld by a suppressor that fires source-wide
waits for that source's own alerts to change. `TickSchedule` visits such keys again whenever they do.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from rules.compiled import CompiledRules, StateLookup
from rules.staleness import stale_reason
from rules.types import ACTIVE_STATUSES, WHOLE_SOURCE, AlertState, BalanceKey, Freshness, subject_key


def next_due(
    rules: CompiledRules,
    key: BalanceKey,
    states: Iterable[AlertState],
    record: Freshness | None,
    now: datetime,
    state_of: StateLookup,
) -> datetime | None:
    """The first moment from which a tick may change `key`'s alerts by time alone (at or before `now`:
    at every tick), or None when time alone never will, provided nothing else changes meanwhile: the
    key's alert states (all of them, resolved ones too), its freshness `record`, the states of the
    alerts that may suppress its ones (`state_of(rule name, key)`, on this key or source-wide) and the
    rules.

    A listed account's record counts for nothing here: when its source's listing turns stale is its
    source's business (`listing_due`)."""
    due: datetime | None = None
    by_rule: dict[str, AlertState] = {}
    for state in states:
        if state.key != key:
            continue
        by_rule[state.rule] = state
        if state.status not in ACTIVE_STATUSES:
            continue  # inactive and resolved states move only on a verdict
        compiled = rules.get(state.rule)
        if compiled is None:
            continue  # its rule is gone: a reload reconciles it, a tick leaves it alone
        rule = compiled.rule
        if rule.watches_balances and not compiled.matches_key(key):
            continue  # out of its rule's scope since a reload: the next observation resolves it
        if state.status == "pending":
            when = (state.pending_since or state.started_at) + rule.for_duration
        elif state.muted or rule.name in rules.muted_names:
            return now  # mute windows open and close with the clock
        elif state.suppressed_by is not None:
            suppressors = rules.suppressors_of(rule.name)
            if any(s.name in rules.muted_names for s in suppressors):
                return now
            if rules.suppressor(rule, key, now, state_of) != state.suppressed_by:
                return now  # no longer withheld, or by another rule: the tick records it
            continue  # withheld: waits for its suppressor's state to change, and sends no reminders
        elif not state.published:
            return now  # nothing withholds it any more: the tick publishes it
        elif rule.repeat is not None:
            when = (state.last_sent_at or state.started_at) + rule.repeat
        else:
            continue
        if due is None or when < due:
            due = when
    if record is None or record.listed:
        return due
    since = record.last_success_at or record.watched_since
    for rule in rules.stale_watching(key):
        if record.access_revoked:
            stale_at = now
        elif rule.after is None:
            continue  # stale only when access is revoked
        else:
            stale_at = since + rule.after
        held = by_rule.get(rule.name)
        # An active alert is stepped again on a stale verdict: a change only when its reason is no longer
        # the record's, a firing one had started to clear, or a pending one's access is revoked (that
        # verdict fires at once, whatever is left of its `for`).
        if (
            held is not None
            and held.status in ACTIVE_STATUSES
            and held.cleared_since is None
            and held.reason == stale_reason(rule, record)
            and not (record.access_revoked and held.status == "pending")
        ):
            continue
        if due is None or stale_at < due:
            due = stale_at
    return due


def listing_due(rules: CompiledRules, record: Freshness | None, now: datetime) -> datetime | None:
    """When the accounts a source's listing answered for are next due, after `now`: the first moment its
    last listing (`record`, the source's own record) is a stale rule's `after` old. None: never, or
    not before the source answers again."""
    if record is None or record.last_listing_at is None:
        return None
    for after in rules.stale_afters:
        when = record.last_listing_at + after
        if when > now:
            return when
    return None


class TickSchedule:
    """The keys a tick must visit: those whose moment came, and those that changed since.

    The owner reports every key whose alert states or freshness changed (`touch`; `touch_all` when
    anything may have, as after a reload of the store's memory), asks which keys are due (`due`, or
    None: every key), ticks them, and then reports each visited key's new states (`settle`). A change
    of the rules makes every key due.
    """

    def __init__(self) -> None:
        self._rules: CompiledRules | None = None
        self._everything = True
        self._touched: set[BalanceKey] = set()
        self._suppressing: set[str] = set()
        self._walk: set[str] = set()  # sources whose record changed: their listings are walked if late
        # POSIX seconds: a float per key is the smallest thing to keep for 100,000 of them.
        self._due: dict[BalanceKey, float] = {}
        self._listings: dict[str, float] = {}
        # Keys with an alert withheld by a suppressor, by source: due again when the source's key changes.
        self._waiting: dict[str, set[BalanceKey]] = {}

    def touch(self, keys: Iterable[BalanceKey], suppressing: Iterable[str] = ()) -> None:
        """These keys' alert states or freshness changed: due at the next tick; and the source-wide alert
        states of the `suppressing` sources changed: their keys with a withheld alert are due too."""
        self._touched.update(keys)
        self._suppressing.update(suppressing)

    def touch_all(self) -> None:
        """Anything may have changed: the next tick visits every key."""
        self._everything = True

    def take_changed(self, rules: CompiledRules) -> set[BalanceKey] | None:
        """The keys that changed since last asked (with those withheld by a source-wide suppressor whose
        source's alerts changed), to `settle` as they are now before `due` is asked: a key that changed
        need be ticked only if that makes it due now. None: every key is to be visited (a start, a
        reload), and `due` says so."""
        if self._everything or rules is not self._rules:
            return None
        return self._take_touched()

    def _take_touched(self) -> set[BalanceKey]:
        """The keys touched since last taken, with those withheld by a suppressor whose source's alerts
        changed; the sources among them are walked by the next tick (their records may have changed)."""
        changed = self._touched
        self._touched = set()
        for source in self._suppressing:
            changed.update(self._waiting.get(source, ()))
        self._suppressing = set()
        # A source's record may have changed: the tick walks its listed accounts if its listing is late.
        self._walk.update(key.source for key in changed if key.account == WHOLE_SOURCE)
        return changed

    def due(self, rules: CompiledRules, now: datetime) -> tuple[set[BalanceKey], set[str]] | None:
        """The keys the tick at `now` must visit, and the sources whose listed accounts it must walk;
        None when it must visit every key and walk every listing. Keys that changed and were not settled
        (`take_changed`) are visited too. What is returned counts as taken: `settle` each key once it is
        ticked."""
        if self._everything or rules is not self._rules:
            self._rules = rules
            self._everything = False
            self._touched.clear()
            self._suppressing.clear()
            self._walk.clear()
            self._due.clear()
            self._listings.clear()
            self._waiting.clear()
            return None
        moment = now.timestamp()
        keys = self._take_touched()
        keys.update(key for key, when in self._due.items() if when <= moment)
        sources = {source for source, when in self._listings.items() if when <= moment}
        sources.update(self._walk)
        self._walk = set()
        # A source whose own moment came is walked too (the tick walks its listing only if it is late).
        sources.update(key.source for key in keys if key.account == WHOLE_SOURCE)
        keys.update(subject_key(source) for source in sources)
        return keys, sources

    def settle(
        self,
        key: BalanceKey,
        states: Iterable[AlertState],
        record: Freshness | None,
        now: datetime,
        state_of: StateLookup,
    ) -> None:
        """Schedule `key` after a tick at `now` visited it: its states and (resolved) record as they are
        now. For a source's own key, also when its listed accounts are next due."""
        rules = self._rules
        if rules is None:
            raise RuntimeError("settle() before due(): the schedule has no rules yet")
        states = states if isinstance(states, (list, tuple)) else list(states)
        when = next_due(rules, key, states, record, now, state_of)
        if when is None:
            self._due.pop(key, None)
        else:
            self._due[key] = when.timestamp()
        waiting = any(s.suppressed_by is not None and s.status in ACTIVE_STATUSES for s in states)
        if waiting:
            self._waiting.setdefault(key.source, set()).add(key)
        elif key.source in self._waiting:
            self._waiting[key.source].discard(key)
        if key.account == WHOLE_SOURCE:
            listing = listing_due(rules, record, now)
            if listing is None:
                self._listings.pop(key.source, None)
            else:
                self._listings[key.source] = listing.timestamp()
