"""Text as a person saved it: the encoding of a table file and the characters a label may hold.

``decode_table`` reads the encodings spreadsheets and editors write: a UTF-8, UTF-16 or UTF-32
byte-order mark decodes as it says; UTF-16 without one is recognised by its zero bytes; other text
is UTF-8, else cp1252 (Windows Western, what Excel writes there) with a note saying so.
"""
from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass

from core.errors import DatasetError

BYTE_ORDER_MARKS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"), (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
"""Unicode's control characters (category Cc) but the tab, which is whitespace folded like a space."""


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str
    note: str | None = None
    """Set when the encoding was inferred rather than declared or UTF-8."""


def decode_table(raw: bytes, name: str) -> Decoded:
    """The text of a table file's bytes; ``name`` is the file as messages call it."""
    for mark, codec, label in BYTE_ORDER_MARKS:
        if raw.startswith(mark):
            return Decoded(_decode(raw, codec, label, name), label)
    order = _utf16_without_mark(raw)
    if order:
        label = f"UTF-16 ({order}-endian)"
        return Decoded(_decode(raw, f"utf-16-{order[0]}e", label, name), label,
                       f"{name} has no byte-order mark; its bytes look like {label}, so it was read as such")
    try:
        return Decoded(raw.decode("utf-8"), "UTF-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        where = f"byte 0x{raw[err.start]:02x} on line {line}"
    for codec, label in (("cp1252", "cp1252 (Windows Western)"), ("latin-1", "latin-1")):
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        return Decoded(text, label, f"{name} is not valid UTF-8 ({where}); read as {label}")
    raise AssertionError("latin-1 decodes any bytes")


def control_characters(text: str) -> list[str]:
    """The control characters in ``text`` other than a tab, as ``U+000A`` names, each once."""
    return list(dict.fromkeys(f"U+{ord(c):04X}" for c in CONTROL.findall(text)))


def clean_label(text: str) -> str:
    """``text`` in composed Unicode (NFC), control characters dropped (line breaks and other
    whitespace ones become spaces) and runs of whitespace collapsed."""
    text = unicodedata.normalize("NFC", text)
    text = CONTROL.sub(lambda match: " " if match.group().isspace() else "", text)
    return " ".join(text.split())


def quote_label(name: str) -> str:
    """``name`` quoted as ``repr`` does, but escaped when not in composed form (NFC): it would print
    exactly like its composed twin."""
    return repr(name) if unicodedata.is_normalized("NFC", name) else ascii(name)


def _decode(raw: bytes, codec: str, label: str, name: str) -> str:
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as err:
        raise DatasetError(f"{name} starts as {label} but byte {err.start} is not valid {label}",
                           "save the file again, as UTF-8") from err


def _utf16_without_mark(raw: bytes) -> str | None:
    """``"little"`` or ``"big"`` when ``raw`` reads as UTF-16 text that is mostly ASCII: at least half of
    its two-byte units have a zero high byte and no low byte is zero."""
    if len(raw) < 4 or len(raw) % 2:
        return None
    units = len(raw) // 2
    low_first, high_first = raw[1::2].count(0), raw[0::2].count(0)
    if low_first * 2 >= units and high_first == 0:
        return "little"
    if high_first * 2 >= units and low_first == 0:
        return "big"
    return None
