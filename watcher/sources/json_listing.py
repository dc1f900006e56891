"""A large JSON listing, `{"<key>": [item, ...]}`, read one array item at a time.

The Mastercard partner-wide listing of 100,000 accounts is a 37 MB body: `json.loads` would hold its whole
text and the tree of every item at once. This reads it in chunks with the json module's own decoder, so
the result is exactly what `watcher.sources.values.load_json` would give, and raises NotStreamable for
anything it cannot take to its end: the caller then reads the body whole, for the same result or the
same error.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Collection, Iterator
from decimal import Decimal

from watcher.sources.body import Body
from watcher.sources.values import refuse_constant

# The body is decoded to text this many bytes at a time.
CHUNK_BYTES = 1024 * 1024
# More of the body is decoded when less than this is left of the text: an account is ~400 characters.
_MARGIN_CHARS = 16 * 1024
_SPACE = re.compile(r"[ \t\n\r]*")
# The values of a body, as load_json reads them: every number an exact Decimal, NaN and Infinity refused.
_VALUES = json.JSONDecoder(parse_float=Decimal, parse_int=Decimal, parse_constant=refuse_constant)


class NotStreamable(Exception):
    """The JSON body is not a plain listing the stream can read to its end: it is read whole instead."""


class JsonListing:
    """A JSON listing `{"account-balances": [ ... ]}` (either spelling, one key only, nothing after the
    object but whitespace) read one array item at a time: the body is decoded a chunk at a time and
    each item is decoded by the json module's own scanner, with the hooks of load_json, then let go.

    Neither the text of the whole body (37 MB for 100,000 accounts, more when not ASCII) nor the tree of
    every item is ever held: a listing's peak memory is the body and its observations, or only its
    observations when the body is spooled (watcher.sources.body). An item is
    exactly what json.loads of the whole body would have made of it (the same decoder, the same UTF-8
    decoding with "surrogatepass"). Anything else raises NotStreamable, the caller then reads the body
    whole: a body of another shape, and a body that is not valid JSON, whose error must be the one of
    the whole read (its words and its position).
    """

    __slots__ = ("_at", "_body", "_decode", "_pos", "_text")

    def __init__(self, body: Body) -> None:
        # The encoding is told by the first four bytes at most.
        if json.detect_encoding(body[:4]) != "utf-8":  # UTF-16 or 32, or a BOM: read whole
            raise NotStreamable
        # Slices of bytes without copies; a spooled body's slices are read from its file.
        self._body = memoryview(body) if isinstance(body, bytes) else body
        self._at = 0  # bytes of the body decoded so far
        self._decode = codecs.getincrementaldecoder("utf-8")("surrogatepass").decode
        self._text = ""  # decoded, not yet read
        self._pos = 0  # where reading is in _text

    def _more(self, at_least: int = CHUNK_BYTES) -> bool:
        """Decode more of the body onto the text not yet read; False when the whole body is decoded."""
        if self._at >= len(self._body):
            return False
        end = self._at + at_least
        try:
            text = self._decode(self._body[self._at : end], end >= len(self._body))
        except UnicodeDecodeError:
            raise NotStreamable from None
        self._at = end
        self._text = self._text[self._pos :] + text
        self._pos = 0
        return True

    def _next(self) -> str:
        """The next character that is not whitespace, not consumed; "" at the end of the body."""
        while True:
            self._pos = _SPACE.match(self._text, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._text):
                return self._text[self._pos]
            if not self._more():
                return ""

    def _expect(self, char: str) -> None:
        if self._next() != char:
            raise NotStreamable
        self._pos += 1

    def _value(self) -> object:
        """The next JSON value. A value that runs to the end of the text decoded so far may go on (a
        number) or be cut (anything): it is read again with more of the body."""
        grow = CHUNK_BYTES
        while True:
            self._next()
            try:
                value, end = _VALUES.raw_decode(self._text, self._pos)
            except (ValueError, RecursionError):  # JSONDecodeError, a refused constant, too deep
                if self._more(grow):
                    grow *= 2  # a long value is not read again a megabyte at a time
                    continue
                raise NotStreamable from None
            if end >= len(self._text) and self._more(grow):
                continue
            self._pos = end
            return value

    def start(self, top_keys: Collection[str]) -> str:
        """Read up to the array: its key (the top-level key, one of `top_keys`)."""
        self._expect("{")
        if self._next() != '"':
            raise NotStreamable
        key = self._value()
        if key not in top_keys:
            raise NotStreamable
        self._expect(":")
        self._expect("[")
        assert isinstance(key, str)
        return key

    def items(self) -> Iterator[object]:
        """Each item of the array, then the end of the body is checked (raising NotStreamable)."""
        if self._next() == "]":
            self._pos += 1
        else:
            decode = _VALUES.raw_decode
            space = _SPACE.match
            while True:
                # Most items lie whole in the text decoded so far, with the character after them: more
                # is decoded before the text runs short, not after an item is found cut (the decoder's
                # error for a cut item counts the lines of the whole text, ~1 ms a megabyte).
                if len(self._text) - self._pos < _MARGIN_CHARS:
                    self._more()
                text = self._text
                try:
                    value, end = decode(text, space(text, self._pos).end())  # type: ignore[union-attr]
                    after = space(text, end).end()  # type: ignore[union-attr]
                    following = text[after]
                except (ValueError, RecursionError, IndexError):  # else read with more of the body
                    value = self._value()
                    following = self._next()
                    after = self._pos
                self._pos = after + 1
                if following == "]":
                    yield value
                    break
                if following != ",":
                    raise NotStreamable
                yield value
        self._expect("}")
        if self._next() != "":
            raise NotStreamable
