"""A Mastercard XML answer in exactly the documented layout, read by a pattern instead of a parser.

Why: a steady listing of 100,000 accounts is 900,000 elements. Expat and ElementTree build an Element
for each (~0.8 CPU s of a ~2.2 s round, measured in process) only for the accounts to be read back out
of them. One compiled pattern per account reads the same seven texts in about a third of that time.

Only a body that is the documented layout and nothing else is read here; for anything else `NotPlain`
is raised, possibly after some accounts were read, and the caller parses the whole body as XML
(`watcher.sources.xmlsafe`), from the start. The layout read here:

    [BOM] [<?xml version="1.0" [encoding="UTF-8"] [standalone="yes|no"]?>] <account-balances> or
    <account_balances>, then any number of <account_balance> elements, each with exactly
    <account_description>, <balance> (<amount>, <currency>, <state>), <balance_timestamp>,
    <created_date>, <non_card_token>, in that order; whitespace between tags, and nothing else.

Why that is safe and reads what the parser would:
- It is a strict subset of well-formed XML: the whole body must match, tag by tag. No attributes, no
  namespaces, no comments, processing instructions, CDATA sections, DTD or empty-element tags.
- A text may not hold `<`, `>` or `&`: there is no reference to expand (no entity, no character
  reference), so a text is its characters exactly as the parser would report them. It may not hold a
  control character other than tab and line feed (carriage returns are normalised by a parser, and the
  others are not XML characters), nor U+FFFE or U+FFFF. The bytes must be valid UTF-8.
- Texts are stripped, as the element path strips them (`mastercard_xml`).
So a body read here has no fault a parser would find, and each account's texts are those the parser's
elements would give. A test reads every variation of the element path's table both ways and compares.

The body is decoded and matched a window at a time (a spooled body is never read whole), so memory stays
that of one window and one account.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator

from watcher.sources.body import Body

# How much of the body is decoded and matched at a time.
WINDOW_BYTES = 256 * 1024
# An account in the documented layout is ~400 bytes; what has not matched in this much is not one.
_MAX_ACCOUNT_CHARS = 16 * 1024
# The declaration and the root's start tag are looked for in this much of the start of the body.
_HEAD_CHARS = 512

_S = r"[ \t\r\n]*"
_TEXT = r"([^<>&\x00-\x08\x0b-\x1f\ufffe\uffff]*)"


def _leaf(name: str) -> str:
    return f"<{name}>{_TEXT}</{name}>"


_ACCOUNT = re.compile(
    _S + "<account_balance>" + _S + _leaf("account_description") + _S + "<balance>" + _S + _leaf("amount")
    + _S + _leaf("currency") + _S + _leaf("state") + _S + "</balance>" + _S + _leaf("balance_timestamp")
    + _S + _leaf("created_date") + _S + _leaf("non_card_token") + _S + "</account_balance>"
)
_HEAD = re.compile(
    '\ufeff?(?:<\\?xml version="1\\.0"(?: encoding="(?:UTF-8|utf-8)")?(?: standalone="(?:yes|no)")?\\?>)?'
    + _S + "<(account-balances|account_balances)>"
)
_TAILS = {root: re.compile(f"{_S}</{root}>{_S}") for root in ("account-balances", "account_balances")}

# One account's texts: description, amount, currency, state, balance timestamp, created date, token
# (stripped when read here; mastercard_json's direct path makes them too, unstripped).
PlainFields = tuple[str, str, str, str, str, str, str]


class NotPlain(Exception):
    """The body is not exactly the documented layout: parse it as XML."""


def plain_listing(body: Body) -> tuple[str, Iterator[PlainFields]]:
    """The root's name and an iterator over the accounts' texts, in order; NotPlain, from this call or
    from the iterator, when the body is not exactly the documented layout (see the module's docstring)."""
    windows = _windows(body)
    text = ""
    for more in windows:  # enough for the declaration and the root's start tag, whatever the window
        text += more
        if len(text) >= _HEAD_CHARS:
            break
    head = _HEAD.match(text)
    if head is None:
        raise NotPlain
    root = head.group(1)
    return root, _accounts(windows, text, head.end(), root)


def _windows(body: Body) -> Iterator[str]:
    """The body decoded a window at a time; NotPlain when it is not valid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for at in range(0, len(body), WINDOW_BYTES):
            yield decoder.decode(body[at : at + WINDOW_BYTES])
        yield decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise NotPlain from None


def _accounts(windows: Iterator[str], text: str, at: int, root: str) -> Iterator[PlainFields]:
    match = _ACCOUNT.match
    while True:
        found = match(text, at)
        if found is not None:
            at = found.end()
            description, amount, currency, state, stamp, created, token = found.groups()
            yield (description.strip(), amount.strip(), currency.strip(), state.strip(), stamp.strip(),
                   created.strip(), token.strip())
            continue
        more = next(windows, None)
        if more is None:  # the whole body is read: only the root's end tag may follow
            if _TAILS[root].fullmatch(text, at) is None:
                raise NotPlain
            return
        if len(text) - at > _MAX_ACCOUNT_CHARS:
            raise NotPlain  # no account here, however much more is read
        text = text[at:] + more
        at = 0
