"""Credentials in URLs, hidden before a text is logged, recorded in a job's history or relayed into a job's log.

A requirement may name a private index or repository with its credentials in the URL
(``pkg @ https://user:token@host/pkg.whl``, ``git+https://ghp_token@github.com/org/repo``,
``https://host/simple/?access_token=...``). :func:`redact_credentials` replaces the user-info part of every URL
with ``***`` and the value of every query parameter whose name says it is a secret (token, key, secret, password,
signature, auth ...) with ``***``; everything else of the text is kept, so the line still says which package and
which host.

The worker image's runner cannot import cumulus: it keeps a copy of this function (``redact_credentials`` in
``worker_image/image/runner.py``); tests/test_redaction.py checks that both give the same answers.
"""

from __future__ import annotations

import re

REDACTED = "***"

#: ``scheme://userinfo@``: the user-info ends at the last ``@`` before the host's path, query or fragment, so a
#: password that (wrongly, unencoded) contains ``@`` is hidden whole.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@]*(?:@[^\s/?#@]*)*@")
#: ``?token=...`` / ``&api_key=...``: a query parameter whose name says it holds a secret.
_SECRET_PARAM = re.compile(
    r"([?&;][^\s=&;#]*(?:token|key|secret|passw|pwd|sig|auth|credential)[^\s=&;#]*=)[^\s&;#]+", re.IGNORECASE)


def redact_credentials(text: str) -> str:
    """``text`` with URL credentials replaced by ``***`` (``https://u:p@host/x`` -> ``https://***@host/x``,
    ``...?token=abc`` -> ``...?token=***``). Pure; never raises for a str."""
    if "://" not in text and "=" not in text:
        return text  # the common case: nothing that could be a URL credential
    text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    return _SECRET_PARAM.sub(lambda m: m.group(1) + REDACTED, text)


__all__ = ["REDACTED", "redact_credentials"]
