"""Masking credentials in text that came back from a server or the network stack.

A vendor or gateway may echo what it received — the secret itself, the ``Authorization``
header (``Basic base64(user:secret)`` or ``Bearer <token>``), a query string with the
secret URL-encoded — in an error page. Whatever we then put into an exception, a log
line or metadata must not carry it in any of those forms. Every HTTP client of the
engine (the Prometheus source, plugins' vendor clients) builds one :class:`Redactor`
from the credentials it was given and passes every server-derived text through
:meth:`Redactor.excerpt` before it reaches an error message.

Masking happens on the whole text *before* it is shortened: cutting first could leave
the beginning of a secret that straddles the cut, which ``str.replace`` would then no
longer recognise.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "**********"


def secret_forms(secret: str) -> set[str]:
    """Every spelling of ``secret`` an echo can carry: raw, URL-encoded, JSON/repr-escaped, base64."""
    if not secret:
        return set()
    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        base64.b64encode(secret.encode()).decode("ascii"),
    }
    return {form for form in forms if form}


def basic_auth_token(user: str, password: str) -> str:
    """The base64 credential of an HTTP Basic ``Authorization`` header."""
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class Redactor:
    """Replaces every known form of a set of credentials with ``**********``."""

    def __init__(self, secrets: Iterable[str] = (), basic_auth: Iterable[tuple[str, str]] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            forms |= secret_forms(secret)
        for user, password in basic_auth:
            forms |= secret_forms(password)
            forms |= secret_forms(basic_auth_token(user, password))
        # Longest first, so a form containing another one is masked whole.
        self._forms = tuple(sorted(forms, key=lambda form: (-len(form), form)))

    def __bool__(self) -> bool:
        return bool(self._forms)

    def __repr__(self) -> str:
        return f"Redactor({len(self._forms)} forms)"

    def redact(self, text: str) -> str:
        """``text`` with every form of every credential masked."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def excerpt(self, text: str, limit: int) -> str:
        """The first ``limit`` characters of ``text`` *after* masking (never part of a secret)."""
        return self.redact(text)[:limit]
