"""`stale` rules: no successful poll of an account, or of a whole source, for a while; or at once when the
provider answers that access is no longer possible (expired consent or token, revoked key).

The engine keeps a `Freshness` per poll subject. `assess_poll` takes every call's outcome: a success
makes its subjects fresh and resolves their stale alerts; a failure never resolves anything, it only
records the reason and, on a revocation, fires at once. Time alone makes a subject stale: that is
rules.timeline.tick, which calls `stale_verdicts` here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from rules.annotations import render_annotations
from rules.compiled import CompiledRules, compile_rules
from rules.durations import format_duration
from rules.lifecycle import AlertTransition, Settled, settle, step
from rules.model import Rule
from rules.types import AlertState, BalanceKey, Freshness, PollOutcome, subject_key

# The stored alert states of one key, by fingerprint (None or empty when there are none): the state
# store's `alerts(key)`, or a dict's `get`.
AlertsOf = Callable[[BalanceKey], Mapping[str, AlertState] | None]
FreshnessOf = Callable[[BalanceKey], Freshness | None]


@dataclass(frozen=True, slots=True)
class PollAssessment:
    """What one poll's outcome leads to: freshness records, alert states to store, transitions to publish."""

    freshness: tuple[Freshness, ...]
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


def _refreshed(outcome: PollOutcome, previous: Freshness | None, subject: BalanceKey) -> Freshness:
    if outcome.ok:
        since = outcome.at if previous is None else previous.watched_since
        return Freshness(subject, since, outcome.at)
    if previous is None:
        return Freshness(subject, outcome.at, None, outcome.reason, outcome.access_revoked)
    # A later failure that is not a revocation (a timeout, say) does not undo one: only a success does.
    return replace(
        previous, last_error=outcome.reason, access_revoked=previous.access_revoked or outcome.access_revoked
    )


def assess_poll(
    outcome: PollOutcome,
    rules: Sequence[Rule],
    freshness_of: FreshnessOf,
    alerts_of: AlertsOf,
) -> PollAssessment:
    """Take one call's outcome: update the freshness of its source and of each account it covered, and
    step their `stale` alerts (resolve on success; fire at once on a revocation; on other failures,
    fire only when `after` has already passed). Failures never resolve anything.

    `freshness_of` and `alerts_of` look up what is stored (a dict's `get` will do). Store the returned
    `freshness` and `alerts` after publishing the `transitions`.

    Only the freshness records that must be stored are returned: a new subject, a failure that
    changed what is known (its reason, a revocation), a success after a failure, and a success at
    least `freshness_resolution` (a tenth of the shortest stale `after`) after the stored one. A
    success sooner than that after a stored success is not returned, so a listing of 100,000 accounts
    polled every few seconds rewrites each account's record once per resolution rather than per poll.
    The price, and the bound: a stored last success lags the true one by less than the resolution, so a
    subject that stops answering goes stale after at least nine tenths of `after` (and at most
    `after`), and the "no successful poll since" of its reason may name a time up to that much early.
    Without stale rules every record is returned (the resolution is zero).
    """
    compiled = compile_rules(rules)
    at = outcome.at
    ok = outcome.ok
    has_stale_rules = compiled.has_stale_rules
    resolution = compiled.freshness_resolution
    source = outcome.source
    subjects = [subject_key(source)]
    subjects += [subject_key(source, account) for account in dict.fromkeys(outcome.accounts)]
    records: list[Freshness] = []
    stepped: list[tuple[Rule, AlertState | None, AlertState]] = []
    for subject in subjects:
        previous = freshness_of(subject)
        if (
            ok
            and previous is not None
            and previous.last_error is None
            and not previous.access_revoked
            and previous.last_success_at is not None
            and previous.last_success_at <= at < previous.last_success_at + resolution
        ):
            # Answered again, soon after a stored success: nothing to store. (Its stale alerts, if any,
            # still resolve below: a reload may have made one fire in between.)
            record = None
        else:
            record = _refreshed(outcome, previous, subject)
            if ok or record != previous:
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
            stale_rule = compiled.get(state.rule) if state.active and state.key == subject else None
            if stale_rule is not None and state.rule in compiled.stale_names:
                after = step(state, stale_rule.rule, None, subject, False, at)
                if after is not None:
                    stepped.append((stale_rule.rule, state, after))
                    if record is None:
                        # A transition names the last success: this one, so store it too.
                        record = _refreshed(outcome, previous, subject)
                        records.append(record)
    if not stepped:
        return PollAssessment(tuple(records), (), ())
    settled = _settle(compiled, stepped, at, alerts_of)
    by_subject = {record.subject: record for record in records}
    transitions = tuple(
        stale_transition(s, at, by_subject.get(s.after.key) or freshness_of(s.after.key))
        for s in settled
        if s.status is not None
    )
    return PollAssessment(tuple(records), transitions, tuple(s.after for s in settled if s.changed))


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
