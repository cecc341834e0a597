"""Text for a terminal: control characters from data are shown, never obeyed.

Identity names, resource names and config values come from vendors and users. Printed
verbatim, an ANSI escape (``\\x1b[2J``) clears the operator's screen or recolours the
rest of the output, a carriage return overwrites the line it is on and a bidi override
(U+202E) reverses what follows. The CLI therefore routes its stdout and stderr through
:class:`EscapingStream`, which writes every such character as a visible escape sequence.
Newlines and tabs are layout and pass unchanged.
"""

from __future__ import annotations

import re
from typing import TextIO

# C0 controls except TAB and LF, DEL, C1 controls, the Unicode bidi embeddings,
# overrides and isolates (the "Trojan Source" characters), and lone surrogates (an
# undecodable byte in argv or the environment arrives as one; a UTF-8 stream refuses to
# write it and the command would die inside ``print``).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character as ``\\xNN`` / ``\\uNNNN`` (newline and tab kept)."""
    return _CONTROL.sub(_visible, text)


class EscapingStream:
    """A text stream wrapper that escapes control characters before they reach ``target``.

    Only ``write`` is changed; everything else (``flush``, ``fileno``, ``isatty``,
    ``encoding``…) is the wrapped stream's, so logging handlers and Dagster's console
    logger can use it like the real ``sys.stderr``.
    """

    def __init__(self, target: TextIO) -> None:
        self._target = target

    @property
    def target(self) -> TextIO:
        return self._target

    def write(self, text: str) -> int:
        self._target.write(escape_controls(text))
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> object:
        return getattr(self._target, name)
