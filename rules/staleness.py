"""`stale` rules: no successful poll of an account, or of a whole source, for a while; or at once when the
provider answers that access is no longer possible (expired consent or token, revoked key).

The engine keeps a `Freshness` per poll subject. `assess_poll` takes every call's outcome: a success
makes its subjects fresh and resolves their stale alerts; a failure never resolves anything, it only
records the reason and, on a revocation, fires at once. Time alone makes a subject stale: that is
rules.timeline.tick, which calls `stale_verdicts` here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, KeysView, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import cast

from rules.annotations import render_annotations
from rules.compiled import CompiledRules, compile_rules
from rules.durations import format_duration
from rules.first_listed import FirstListedRecords
from rules.lifecycle import AlertTransition, Settled, settle, step
from rules.model import Rule
from rules.types import WHOLE_SOURCE, AlertState, BalanceKey, Freshness, PollOutcome, subject_key

# The stored alert states of one key, by fingerprint (None or empty when there are none): the state
# store's `alerts(key)`, or a dict's `get`.
AlertsOf = Callable[[BalanceKey], Mapping[str, AlertState] | None]
FreshnessOf = Callable[[BalanceKey], Freshness | None]
# The accounts of a source whose stored records are `listed` (answered in its latest listing).
ListedOf = Callable[[str], Collection[str]]


@dataclass(frozen=True, slots=True)
class PollAssessment:
    """What one poll's outcome leads to: freshness records, alert states to store, transitions to publish."""

    freshness: Sequence[Freshness]  # a tuple, or rules.first_listed's records after a first listing
    transitions: tuple[AlertTransition, ...]
    alerts: tuple[AlertState, ...]


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def stale_reason(rule: Rule, freshness: Freshness) -> str:
    """Why the subject is stale, in one sentence for on-call."""
    if freshness.access_revoked:
        return f"access revoked: {freshness.last_error}" if freshness.last_error else "access revoked"
    if freshness.last_success_at is not None:
        text = f"no successful poll since {_utc(freshness.last_success_at)}"
    else:
        text = f"no successful poll since watching began at {_utc(freshness.watched_since)}"
    if rule.after is not None:
        text += f" (over {format_duration(rule.after)})"
    return f"{text}; last error: {freshness.last_error}" if freshness.last_error else text


def is_stale(rule: Rule, freshness: Freshness, at: datetime) -> bool:
    """True when the subject has not answered for the rule's `after`, or access was revoked."""
    if freshness.access_revoked:
        return True
    since = freshness.last_success_at or freshness.watched_since
    return rule.after is not None and at - since >= rule.after


def stale_verdicts(
    rules: CompiledRules, freshness: Freshness, at: datetime, states: AlertsOf
) -> list[tuple[Rule, AlertState | None, AlertState]]:
    """Step every stale rule watching the subject on the verdict at `at`; never resolves (it cannot
    know of a success), so only what holds is stepped, and what still fires is passed on (reminders,
    the end of a mute window or of a suppression)."""
    stepped: list[tuple[Rule, AlertState | None, AlertState]] = []
    watching = rules.stale_watching(freshness.subject)
    if not watching:
        return stepped
    known = states(freshness.subject)
    subject = freshness.subject
    by_rule = {state.rule: state for state in known.values() if state.key == subject} if known else {}
    for rule in watching:
        before = by_rule.get(rule.name)
        if not is_stale(rule, freshness, at):
            if before is not None and before.status == "firing" and rules.may_publish(before, at):
                stepped.append((rule, before, before))
            continue
        reason = stale_reason(rule, freshness)
        after = step(
            before, rule, None, freshness.subject, True, at, immediate=freshness.access_revoked, reason=reason
        )
        if after is not None and (after is not before or rules.may_publish(after, at)):
            stepped.append((rule, before, after))
    return stepped


def stale_transition(settled: Settled, at: datetime, freshness: Freshness | None) -> AlertTransition:
    """The transition of a settled stale alert (no balance: it is about polls)."""
    assert settled.status is not None
    rule, state = settled.rule, settled.after
    annotations = render_annotations(
        rule,
        state.key,
        last_success=None if freshness is None else freshness.last_success_at,
        reason=state.reason,
        started_at=state.started_at,
    )
    return AlertTransition(settled.status, rule, state, None, at, None, annotations)


def resolve_listed(record: Freshness, listing_at: datetime | None) -> Freshness:
    """A listed account's record with its last success filled in: its source's last listing."""
    if not record.listed or listing_at is None:
        return record
    if record.last_success_at is not None and record.last_success_at >= listing_at:
        return record
    return replace(record, last_success_at=listing_at)


def last_listing(freshness_of: FreshnessOf, source: str) -> datetime | None:
    """When `source` last answered a listing, as its record says (None: never)."""
    record = freshness_of(subject_key(source))
    return None if record is None else record.last_listing_at


def resolving(freshness_of: FreshnessOf) -> FreshnessOf:
    """A look-up of stored records that fills in the last success of listed accounts."""

    def lookup(subject: BalanceKey) -> Freshness | None:
        record = freshness_of(subject)
        if record is None or not record.listed:
            return record
        return resolve_listed(record, last_listing(freshness_of, subject.source))

    return lookup


def _refreshed(
    outcome: PollOutcome, previous: Freshness | None, subject: BalanceKey, *, listed: bool
) -> Freshness:
    """`previous` as resolved (a listed account's last success filled in)."""
    if outcome.ok:
        since = outcome.at if previous is None else previous.watched_since
        if subject.account == WHOLE_SOURCE:
            listing_at = (
                outcome.at if outcome.listing else (None if previous is None else previous.last_listing_at)
            )
            return Freshness(subject, since, outcome.at, last_listing_at=listing_at)
        return Freshness(subject, since, outcome.at, listed=listed)
    if previous is None:
        return Freshness(subject, outcome.at, None, outcome.reason, outcome.access_revoked)
    # A later failure that is not a revocation (a timeout, say) does not undo one: only a success does.
    # A listed account that fails keeps its own record from now on (with the time it last answered).
    return replace(
        previous,
        last_error=outcome.reason,
        access_revoked=previous.access_revoked or outcome.access_revoked,
        listed=False,
    )


def assess_poll(
    outcome: PollOutcome,
    rules: Sequence[Rule],
    freshness_of: FreshnessOf,
    alerts_of: AlertsOf,
    *,
    listed_of: ListedOf | None = None,
    active_keys: Callable[[], Iterable[BalanceKey]] | None = None,
    subject_of: Callable[[str], BalanceKey] | None = None,
) -> PollAssessment:
    """Take one call's outcome: update the freshness of its source and of each account it covered, and
    step their `stale` alerts (resolve on success; fire at once on a revocation; on other failures,
    fire only when `after` has already passed). Failures never resolve anything.

    `freshness_of` and `alerts_of` look up what is stored (a dict's `get` will do). Store the returned
    `freshness` and `alerts` after publishing the `transitions`.

    Only the freshness records that must be stored are returned: a new subject, a failure that
    changed what is known (its reason, a revocation), a success after a failure, and a success at
    least `freshness_resolution` (a tenth of the shortest stale `after`) after the stored one. A
    success sooner than that after a stored success is not returned, so an account polled every few
    seconds rewrites its record once per resolution rather than per poll. The price, and the bound: a
    stored last success lags the true one by less than the resolution, so a subject that stops
    answering goes stale after at least nine tenths of `after` (and at most `after`), and the "no
    successful poll since" of its reason may name a time up to that much early. Without stale rules
    every record is returned (the resolution is zero).

    A successful listing (`outcome.listing`), given `listed_of` (the accounts of a source whose stored
    records are listed) and `active_keys` (the keys with a pending or firing state), is stored as one fact:
    the source's record with `last_listing_at`, exact; a record only for the accounts that were not
    listed (new, failing before, or answered by single calls) and, unlisted with the time of the
    previous listing, for those that dropped out of it. An account listed again costs nothing.

    `subject_of`, given, makes the subject key of an account of the call: an object equal to
    `subject_key(source, account)` (the caller's own key of that account, so that 100,000 new records
    do not each hold a key of their own).
    """
    compiled = compile_rules(rules)
    at = outcome.at
    ok = outcome.ok
    has_stale_rules = compiled.has_stale_rules
    resolution = compiled.freshness_resolution
    source = outcome.source
    stored = resolving(freshness_of)
    as_listing = ok and outcome.listing and listed_of is not None and active_keys is not None
    # A record, or the key of an account first seen in this listing, whose record is made when read.
    records: list[Freshness | BalanceKey] = []
    first_listed = False
    subjects = [subject_key(source)]
    make_subject = subject_of if subject_of is not None else partial(subject_key, source)
    accounts = outcome.accounts
    answered = accounts if isinstance(accounts, KeysView) else dict.fromkeys(accounts)
    listed_before: Collection[str] = ()
    if as_listing:
        assert listed_of is not None
        listed_before = listed_of(source)
        subjects += [make_subject(account) for account in answered if account not in listed_before]
        previous_listing = last_listing(freshness_of, source)
        for account in listed_before:
            if account not in answered:  # dropped out of the listing: it last answered in the previous one
                dropped = freshness_of(subject_key(source, account))
                if dropped is not None and dropped.listed:
                    records.append(replace(resolve_listed(dropped, previous_listing), listed=False))
    else:
        subjects += [make_subject(account) for account in answered]
    stepped: list[tuple[Rule, AlertState | None, AlertState]] = []
    for subject in subjects:
        previous = stored(subject)
        record: Freshness | None = None
        if (
            ok
            and not as_listing
            and previous is not None
            and previous.last_error is None
            and not previous.access_revoked
            and not previous.listed
            and previous.last_success_at is not None
            and previous.last_success_at <= at < previous.last_success_at + resolution
        ):
            # Answered again, soon after a stored success: nothing to store. (Its stale alerts, if any,
            # still resolve below: a reload may have made one fire in between.)
            storing = False
        elif as_listing and previous is None and subject.account != WHOLE_SOURCE:
            # First seen in this listing: `Freshness(subject, at, at, listed=True)`, made when read, not
            # held for each of 100,000 accounts until the store has written them (rules.first_listed).
            records.append(subject)
            first_listed = storing = True
        else:
            record = _refreshed(outcome, previous, subject, listed=as_listing)
            storing = ok or record != previous
            if storing:
                records.append(record)
        if not has_stale_rules:
            continue
        if not ok:
            assert record is not None
            stepped += stale_verdicts(compiled, record, at, alerts_of)
            continue
        # A success: whatever stale alert the subject has stops holding, in scope or not any more.
        found = alerts_of(subject)
        if not found:
            continue
        for state in found.values():
            if (
                state.active
                and state.key == subject
                and _resolve_stale(compiled, state, at, stepped)
                and not storing
            ):
                # A transition names the last success: this one, so store it too.
                records.append(_refreshed(outcome, previous, subject, listed=False))
                storing = True
    if as_listing and has_stale_rules:
        # The stale alerts of accounts listed again (no record visited above) resolve too.
        assert active_keys is not None
        for key in active_keys():  # by key first: a state is read only for a key listed again
            if (
                key.source == source
                and key.account in answered
                and key.account in listed_before
                and key.account != WHOLE_SOURCE
                and key == subject_key(source, key.account)
            ):
                found = alerts_of(key)
                for state in found.values() if found else ():
                    if state.active:
                        _resolve_stale(compiled, state, at, stepped)
    freshness: Sequence[Freshness] = (
        FirstListedRecords(records, at) if first_listed else tuple(cast("list[Freshness]", records))
    )
    if not stepped:
        return PollAssessment(freshness, (), ())
    settled = _settle(compiled, stepped, at, alerts_of)
    by_subject = {record.subject: record for record in freshness}
    # As stored once this call's records are: a transition names the last success they hold.
    current = resolving(lambda subject: by_subject.get(subject) or freshness_of(subject))
    transitions = tuple(
        stale_transition(s, at, current(s.after.key)) for s in settled if s.status is not None
    )
    return PollAssessment(freshness, transitions, tuple(s.after for s in settled if s.changed))


def _resolve_stale(
    compiled: CompiledRules,
    state: AlertState,
    at: datetime,
    stepped: list[tuple[Rule, AlertState | None, AlertState]],
) -> bool:
    """Step an active state of a `stale` rule on a success (its subject answered); True if it moved."""
    stale_rule = compiled.get(state.rule) if state.rule in compiled.stale_names else None
    if stale_rule is None:
        return False
    after = step(state, stale_rule.rule, None, state.key, False, at)
    if after is None:
        return False
    stepped.append((stale_rule.rule, state, after))
    return True


def _settle(
    rules: CompiledRules,
    stepped: Iterable[tuple[Rule, AlertState | None, AlertState]],
    at: datetime,
    alerts_of: AlertsOf,
) -> list[Settled]:
    stepped = list(stepped)
    now_by_key = {(after.rule, after.key): after for _, _, after in stepped}

    def state_of(name: str, key: BalanceKey) -> AlertState | None:
        found = now_by_key.get((name, key))
        if found is not None:
            return found
        found_states = alerts_of(key) or {}
        return next((s for s in found_states.values() if s.rule == name and s.key == key), None)

    settled = settle(stepped, at, lambda rule, key: rules.suppressor(rule, key, at, state_of))
    return sorted(
        settled, key=lambda s: (s.status != "resolved", rules.order(s.rule.name), s.after.key.account)
    )
