"""A listing leaves out of its observations the accounts answered unchanged for which nothing would
follow (ListingKeys.quiet, set by the poller): the events, the state and the freshness it leads to are
exactly those of the same listings observed in full, round after round, in both formats; and it does
leave accounts out.

The real parser and ListingKeys, the real poller, rules (rules.example.toml and a `change` rule), state
store and outbox; bodies rendered by the sandbox's renderer. The real source and broker are exercised
end to end elsewhere (test_end_to_end.py)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sandbox_accounts import sandbox_account

from rules.loader import load_rule_files, parse_rules
from rules.types import BalanceKey, KnownBalance, subject_key
from watcher.events import Event
from watcher.poller import OutboxDelivery, Poller, RoundSummary, RulesHolder
from watcher.sandbox.mastercard import AccountBalanceView, render_json, render_xml
from watcher.sources.base import FetchResult, QuietUnchanged
from watcher.sources.mastercard_accounts import ListingKeys
from watcher.sources.mastercard_json import parse_mastercard_json
from watcher.sources.mastercard_xml import parse_mastercard_xml
from watcher.store import StateStore

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
CHANGE_RULE = parse_rules(
    {"rules": [{"name": "usd-moved", "kind": "change", "min_change": "50.00", "source": "mc-*",
                "currency": "USD"}]},
    "extra.toml",
)
RULES = (*load_rule_files([ROOT / "rules.example.toml"]).rules, *CHANGE_RULE)


class ParsedListing:
    """A partner-wide listing (target "*") read by the real Mastercard parser with the source's
    ListingKeys, as MastercardSendSource reads one; `quiet` False ignores the poller's judgement, so
    that every account is observed (the reference)."""

    name = "mc-list"
    provider = "mastercard-send"
    max_concurrency = 1

    def __init__(self, fmt: str, *, quiet: bool) -> None:
        self.keys = ListingKeys()
        self.views: list[AccountBalanceView] = []
        self.now = T0
        self.calls = 0
        self.unchanged = 0  # accounts left out, over every call
        self._fmt = fmt
        self._quiet = quiet

    def targets(self) -> Sequence[str]:
        return ("*",)

    def share_known(self, known: Callable[[BalanceKey], KnownBalance | None], quiet: QuietUnchanged) -> None:
        self.keys.known = known
        if self._quiet:
            self.keys.quiet = quiet

    async def fetch(self, target: str) -> FetchResult:
        self.calls += 1
        correlation = f"corr-{self.calls}"
        render, parse = (render_json, parse_mastercard_json) if self._fmt == "json" else (
            render_xml, parse_mastercard_xml)
        parsed = parse(render(self.views, listing=True), source=self.name, observed_at=self.now,
                       correlation_id=correlation, keys=self.keys)
        self.unchanged += parsed.unchanged
        return FetchResult(self.name, target, "ok", correlation, observations=parsed.observations,
                           rejected=parsed.rejected, http_status=200, accounts=self.keys.latest,
                           unchanged=parsed.unchanged)


def _first_views(rng: random.Random, count: int) -> list[AccountBalanceView]:
    """Accounts around the example rules' thresholds: GBP around 1,000 and 5,000 (below, drop), EUR
    around 18,000 (above), USD (change), some IN_DEBIT (state, overdrawn)."""
    views = []
    for i in range(count):
        currency = ("GBP", "GBP", "EUR", "USD")[i % 4]
        base = {"GBP": rng.choice([800, 4900, 5300, 9000]), "EUR": rng.choice([17400, 18100]),
                "USD": 3000}[currency]
        amount = f"{base + rng.randrange(0, 300)}.{i % 100:02d}"
        state = "IN_DEBIT" if rng.random() < 0.1 else "IN_CREDIT"
        views.append(sandbox_account(i, currency=currency, amount=amount, state=state))
    return views


def _moved(rng: random.Random, view: AccountBalanceView) -> AccountBalanceView:
    """One account changed one way or another: a small or a large move of its amount (across a
    threshold or not), its state flipped, its description edited, or its amount written with another
    exponent (an equal amount that is not the same)."""
    what = rng.randrange(6)
    units, _, cents = view.amount.partition(".")
    if what == 0:
        return replace(view, amount=f"{int(units) + rng.randrange(1, 40)}.{cents}")
    if what == 1:
        return replace(view, amount=f"{max(0, int(units) + rng.choice([-4000, -2500, 2500, 4000]))}.{cents}")
    if what == 2:
        return replace(view, state="IN_CREDIT" if view.state == "IN_DEBIT" else "IN_DEBIT")
    if what == 3:
        return replace(view, account_description=f"{view.account_description} (edited)")
    if what == 4:
        return replace(view, amount=f"{units}.{cents}0")
    return replace(view, amount=f"{int(units) - rng.randrange(1, 40)}.{cents}")


def _round_views(rng: random.Random, views: list[AccountBalanceView]) -> list[AccountBalanceView]:
    """The next listing: a few accounts changed, some left out of this one (they come back later),
    and now and then the balance timestamps all move (which alone changes nothing)."""
    moved = [_moved(rng, v) if rng.random() < 0.15 else v for v in views]
    views[:] = moved
    stamp = f"2026-12-04T09:{rng.randrange(60):02d}:00Z"
    shown = [v for v in moved if rng.random() > 0.05]
    return [replace(v, balance_timestamp=stamp) for v in shown] if rng.random() < 0.3 else shown


async def _poller(tmp_path: Path, name: str, source: ParsedListing) -> tuple[Poller, StateStore, list[Event]]:
    store = StateStore(tmp_path / f"{name}.db")
    await store.open()
    delivered: list[Event] = []
    delivery = OutboxDelivery(store, wake=lambda: None, on_event=delivered.append)
    poller = Poller(source, store, delivery, RulesHolder(RULES), clock=lambda: source.now)
    return poller, store, delivered


def _state(store: StateStore, keys: Sequence[BalanceKey]) -> list[object]:
    """Everything the store holds of these keys: known balances, alert states, freshness."""
    return [(store.known(k), dict(store.alerts_view(k)), store.freshness(subject_key(k.source, k.account)))
            for k in keys] + [dict(store.alerts_view(subject_key("mc-list"))),
                              store.freshness(subject_key("mc-list"))]


def _summary(summary: RoundSummary) -> tuple[int, int, int]:
    return summary.calls, summary.observations, summary.events


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize("seed", range(4))
async def test_a_listing_that_leaves_quiet_accounts_out_leads_to_what_observing_them_all_does(
    tmp_path: Path, fmt: str, seed: int
) -> None:
    """Twelve rounds of a listing of 80 accounts, a few of them changed each round, some missing from
    some rounds, time moving 5 s to 40 min between rounds (so that `for`, `keep_firing_for` and the drop
    window pass): observed with quiet accounts left out, and in full. Each round delivers the same
    events in the same order, counts the same balances, and leaves the same state; most accounts of a
    steady round are left out, not all (the breached ones are observed)."""
    rng = random.Random(seed)
    views = _first_views(rng, 80)
    skipping, full = ParsedListing(fmt, quiet=True), ParsedListing(fmt, quiet=False)
    poller_a, store_a, events_a = await _poller(tmp_path, "skipping", skipping)
    poller_b, store_b, events_b = await _poller(tmp_path, "full", full)
    keys = [BalanceKey("mc-list", v.non_card_token) for v in views]
    listing = views
    for round_no in range(12):
        if round_no:
            listing = _round_views(rng, views)
            step = timedelta(seconds=rng.choice([5, 30, 90, 600, 2400]))
            skipping.now = full.now = skipping.now + step
        skipping.views = full.views = listing
        summary_a, summary_b = await poller_a.poll_round(), await poller_b.poll_round()
        assert _summary(summary_a) == _summary(summary_b), f"round {round_no}"
        assert events_a == events_b, f"round {round_no}"
        assert _state(store_a, keys) == _state(store_b, keys), f"round {round_no}"
    assert full.unchanged == 0
    # Round 1 observes every account (all new). Of the later ones, those unchanged and inside every
    # rule's quiet range are left out: here about 40 % (the others are breached, changed or moved).
    assert skipping.unchanged > 11 * 80 // 4
    assert len(events_a) > 30  # the rounds did lead to events, or the comparison says little
    await store_a.close()
    await store_b.close()


async def test_a_listing_of_unchanged_quiet_accounts_counts_them_and_lists_them(tmp_path: Path) -> None:
    """A listing whose accounts are unchanged and breach nothing leaves them out, all but the first (the
    first account of each currency in a body is read by the general path, which always observes): the
    call is ok, the accounts left out count as balances, and staleness sees them answered."""
    source = ParsedListing("json", quiet=True)
    source.views = [sandbox_account(i, amount="9000.00") for i in range(5)]
    poller, store, _events = await _poller(tmp_path, "all-quiet", source)
    first = await poller.poll_round()
    source.now = T0 + timedelta(minutes=1)
    second = await poller.poll_round()
    assert (first.observations, first.events, second.observations, second.events) == (5, 5, 5, 0)
    assert second.outcomes == {"ok": 1}
    assert source.unchanged == 4
    account = store.freshness(subject_key("mc-list", "non_card_token:sbx-P-0000"))
    whole = store.freshness(subject_key("mc-list"))
    assert account is not None
    assert account.listed
    assert whole is not None
    assert whole.last_listing_at == T0 + timedelta(minutes=1)
    await store.close()
