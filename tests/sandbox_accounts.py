"""Test helper: the sandbox's Mastercard account, and the amount texts that the direct paths' tables, XML
(test_parse_mastercard.py) and JSON (test_json_direct_path.py), both try."""

from __future__ import annotations

from watcher.sandbox.mastercard import AccountBalanceView


def sandbox_account(i: int, **fields: str) -> AccountBalanceView:
    """A plain account as the sandbox renders it, token `non_card_token:sbx-P-{i:04d}`, with `fields`
    replaced."""
    plain = {"account_description": "Main prefunding", "amount": "23998.19", "currency": "GBP",
             "state": "IN_CREDIT", "balance_timestamp": "2026-12-02T12:00:00Z",
             "created_date": "2018-01-10T09:30:00Z", "non_card_token": f"non_card_token:sbx-P-{i:04d}"}
    return AccountBalanceView(**{**plain, **fields})


def varied_accounts(count: int) -> list[AccountBalanceView]:
    """`count` sandbox accounts with both states, three currencies, five balance timestamps and seven
    creation dates: a listing whose repeated values the parse must share."""
    return [sandbox_account(i, amount=f"{i}.{i % 100:02d}", state=("IN_DEBIT", "IN_CREDIT")[i % 2],
                            currency=("GBP", "EUR", "USD")[i % 3], created_date=f"2018-01-{1 + i % 7:02d}",
                            balance_timestamp=f"2026-12-02T12:00:0{i % 5}Z") for i in range(count)]


# (what, in place of the plain amount 23998.19, read by the direct path): the plain unsigned decimal of up
# to 18 digits either side of the point is; anything else is read by the general path, which refuses it.
AMOUNT_TEXTS: list[tuple[str, str, bool]] = [
    ("with leading zeros", "0023998.190", True),
    ("zero", "0", True),
    ("at the bounds", f"{'9' * 18}.{'1' * 18}", True),
    ("too long", "9" * 19, False),
    ("too fine", f"1.{'1' * 19}", False),
    ("exponent", "1e3", False),
    ("negative", "-5.00", False),
    ("plus", "+5", False),
    ("trailing dot", "5.", False),
    ("leading dot", ".5", False),
    ("NaN", "NaN", False),
    ("full-width digits", "\uff11\uff12", False),
    ("with a comma", "23,998.19", False),
]
