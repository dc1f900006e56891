"""The life of one alert (rule x key): inactive -> pending -> firing -> resolved, and what gets published.

Two steps, both pure. `step` moves the state on a verdict about the rule's condition (or on time
alone); `publish` then decides what on-call sees: the firing (at once, or later when a mute window or
a suppressing alert stops withholding it), reminders every `repeat`, and the resolve (only of a
firing that was published). Pending is never published.

Resolution needs evidence: only a verdict that the condition no longer holds resolves, never time
alone nor a failed poll. Firing, on the other hand, may come from time alone: a pending alert whose
`for` has elapsed fires even if no new observation came (the balance is taken to stay as last seen).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from rules.compiled import fingerprint as fingerprint_of
from rules.model import Rule
from rules.schedule import is_muted
from rules.types import AlertState, Balance, BalanceKey, Observation

TransitionStatus = Literal["firing", "resolved", "repeat"]


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """Something to publish about one alert: it fired, resolved, or is still firing ("repeat", a
    reminder). `state` is its new stored state.

    `trigger` is the observation that caused it; None when time passing, a poll or a rules reload did.
    `at` is when it happened; `balance` the balance it is about (the last known one when there is no
    trigger; None for `stale` alerts); `annotations` the rule's annotations rendered for this alert.
    """

    status: TransitionStatus
    rule: Rule
    state: AlertState
    trigger: Observation | None
    at: datetime
    balance: Balance | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def observation(self) -> Observation:
        """The triggering observation; LookupError when time or a poll caused the transition."""
        if self.trigger is None:
            raise LookupError(f"this {self.status} transition came from time or a poll, not an observation")
        return self.trigger

    @property
    def firing_for(self) -> timedelta:
        """How long the alert has fired: until it resolved, or until this transition."""
        end = self.state.resolved_at if self.status == "resolved" and self.state.resolved_at else self.at
        return end - self.state.started_at

    @property
    def reminder(self) -> bool:
        """True for a repeat: the same firing alert, published again."""
        return self.status == "repeat"

    @property
    def delayed(self) -> bool:
        """True for a firing published after it started: a mute window or a suppression withheld it."""
        return self.status == "firing" and self.state.started_at < self.at


def _fire(
    state: AlertState | None,
    rule: Rule,
    fingerprint: str | None,
    key: BalanceKey,
    at: datetime,
    reason: str | None,
) -> AlertState:
    episode = 1 if state is None else state.episode + 1
    if fingerprint is None:
        fingerprint = state.fingerprint if state is not None else fingerprint_of(rule.name, key)
    pending_since = None
    if state is not None and state.status == "pending":
        pending_since = state.pending_since or state.started_at
    return AlertState(
        fingerprint,
        rule.name,
        key,
        "firing",
        episode,
        at,
        pending_since=pending_since or at,
        published=False,  # until `publish` says otherwise
        reason=reason,
        kind=rule.kind,
        severity=rule.severity,
    )


def step(
    state: AlertState | None,
    rule: Rule,
    fingerprint: str | None,
    key: BalanceKey,
    holds: bool | None,
    at: datetime,
    *,
    immediate: bool = False,
    reason: str | None = None,
) -> AlertState | None:
    """The alert's state after a verdict at `at`: `holds` True or False, or None for "time passed, no
    new verdict". `immediate` skips `for` (access revoked). Returns `state` itself when nothing changed
    (None when there was no state and there still is nothing to keep). `fingerprint` None: the state's,
    or computed for a new one (so that the common case, nothing to store, costs no hashing)."""
    status = "inactive" if state is None else state.status
    if status == "firing":
        assert state is not None
        if holds is None:
            return state
        if holds:
            if state.cleared_since is None and (reason is None or reason == state.reason):
                return state
            return replace(state, cleared_since=None, reason=reason or state.reason)
        cleared_since = state.cleared_since or at
        if at - cleared_since >= rule.keep_firing_for:
            return replace(
                state,
                status="resolved",
                resolved_at=at,
                cleared_since=None,
                muted=False,
                suppressed_by=None,
                kind=rule.kind,
                severity=rule.severity,
            )
        return state if state.cleared_since is not None else replace(state, cleared_since=at)
    if status == "pending":
        assert state is not None
        # A pending state always records when it became pending (in started_at too, should a store
        # not keep pending_since).
        since = state.pending_since or state.started_at
        if holds is False:
            return replace(state, status="inactive", pending_since=None)
        if immediate or at - since >= rule.for_duration:
            return _fire(state, rule, fingerprint, key, at, reason or state.reason)
        if holds and reason is not None and reason != state.reason:
            return replace(state, reason=reason)
        return state
    # inactive or resolved
    if not holds:
        return state
    if immediate or rule.for_duration <= timedelta(0):
        return _fire(state, rule, fingerprint, key, at, reason)
    if state is None:
        return AlertState(
            fingerprint or fingerprint_of(rule.name, key),
            rule.name,
            key,
            "pending",
            0,
            at,
            pending_since=at,
            reason=reason,
            kind=rule.kind,
            severity=rule.severity,
        )
    return replace(
        state,
        status="pending",
        pending_since=at,
        started_at=at,
        resolved_at=None,
        reason=reason,
        kind=rule.kind,
        severity=rule.severity,
    )


def publish(
    before: AlertState | None,
    after: AlertState,
    rule: Rule,
    at: datetime,
    suppressed_by: str | None,
) -> tuple[AlertState, TransitionStatus | None]:
    """What to publish about an alert after its `step`, and the state that records it.

    `suppressed_by` names a firing rule that suppresses this one now; the rule's own mute windows are
    judged here. A withheld firing publishes when no longer withheld; reminders wait while withheld.
    """
    if after.status == "resolved":
        if before is not None and before.status == "firing":
            return after, "resolved" if before.published else None
        return after, None
    if after.status != "firing":
        return after, None
    muted = bool(rule.mute) and is_muted(rule.mute, at)
    newly = before is None or before.status != "firing" or before.episode != after.episode
    if muted or suppressed_by is not None:
        if newly:
            return replace(after, published=False, muted=muted, suppressed_by=suppressed_by), None
        if after.muted == muted and after.suppressed_by == suppressed_by:
            return after, None
        return replace(after, muted=muted, suppressed_by=suppressed_by), None
    if newly or not after.published:
        sent = replace(after, published=True, muted=False, suppressed_by=None, last_sent_at=at)
        return sent, "firing"
    if rule.repeat is not None and at - (after.last_sent_at or after.started_at) >= rule.repeat:
        reminded = replace(after, muted=False, suppressed_by=None, last_sent_at=at, repeats=after.repeats + 1)
        return reminded, "repeat"
    if after.muted or after.suppressed_by is not None:
        return replace(after, muted=False, suppressed_by=None), None
    return after, None


# The name of a rule that suppresses `rule`'s alert on `key` at the moment, or None.
SuppressorLookup = Callable[[Rule, BalanceKey], str | None]


@dataclass(frozen=True, slots=True)
class Settled:
    """One alert after `step` and `publish`: its rule, the state before and after, what to publish."""

    rule: Rule
    before: AlertState | None
    after: AlertState
    status: TransitionStatus | None

    @property
    def changed(self) -> bool:
        """True when the state to store differs from the one given."""
        return self.after is not self.before


def settle(
    stepped: Sequence[tuple[Rule, AlertState | None, AlertState]],
    at: datetime,
    suppressor: SuppressorLookup,
) -> list[Settled]:
    """`publish` for every (rule, before, after) of one moment, after all of them have stepped, so that a
    suppressing alert that fired or resolved at the same moment counts."""
    settled: list[Settled] = []
    for rule, before, after in stepped:
        suppressed_by = suppressor(rule, after.key) if after.status == "firing" else None
        final, status = publish(before, after, rule, at, suppressed_by)
        settled.append(Settled(rule, before, final, status))
    return settled
