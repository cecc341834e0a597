"""One TLS context for every HTTP client of the process.

httpx builds a new default context for each client, loading the CA bundle every time
(~25 ms), and a tenant's runtime creates a client per API it talks to (Confluent Cloud,
each Flink region, Prometheus) on every run. The context is built once, on first use,
with httpx's own defaults (its CA bundle; ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` as set at
that moment) and never modified afterwards, so the clients can share it.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def default_tls_context() -> ssl.SSLContext:
    """The shared ``verify=`` context for httpx clients (certificates are still verified)."""
    return httpx.create_ssl_context()
