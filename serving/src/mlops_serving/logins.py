"""Reviewer logins (the page and the API's basic auth), with password guessing slowed down.

Failed attempts are counted in PostgreSQL per client address and per account
name, so the limits hold across the web app's processes and hosts; past a
limit within the window, logins from that client (or to that account) are
refused with 429 and Retry-After until the oldest failure leaves the window.
Every failure is logged with the client address and the account name tried.
"""

from __future__ import annotations

import hmac
import logging

from flask import request
from werkzeug.security import check_password_hash

from .context import state

log = logging.getLogger(__name__)


class TooManyFailures(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"too many failed logins; try again in {retry_after} s")
        self.retry_after = retry_after


def client_address() -> str:
    return request.remote_addr or "unknown"


def _keys(username: str) -> dict[str, str]:
    return {"client": f"client:{client_address()}", "account": f"account:{username[:64]}"}


def password_matches(username: str, password: str) -> bool:
    """Reviewers come from MLOPS_REVIEWERS: user:werkzeug-hash, or user:password (0600 env file)."""
    stored = state().config.reviewers_by_name().get(username)
    if not stored:
        return False
    if stored.startswith(("scrypt:", "pbkdf2:")):
        return check_password_hash(stored, password)
    return hmac.compare_digest(stored.encode(), password.encode())


def check(username: str, password: str) -> bool:
    """True for the right password; raises TooManyFailures while this client or account is
    over its limit (whatever the password)."""
    config = state().config
    keys = _keys(username)
    limits = {
        keys["client"]: config.login_failures_per_client,
        keys["account"]: config.login_failures_per_account,
    }
    window = f"{config.login_window_seconds} seconds"
    with state().pool.connection() as conn:
        rows = conn.execute(
            "SELECT key, count(*), extract(epoch FROM min(failed_at) + %s::interval - now())"
            " FROM login_failures WHERE key = ANY(%s) AND failed_at > now() - %s::interval"
            " GROUP BY key",
            (window, list(limits), window),
        ).fetchall()
        for key, failures, seconds_left in rows:
            if failures >= limits[key]:
                log.warning("login refused (%s over its limit): account %r", key, username[:64])
                raise TooManyFailures(max(1, int(seconds_left) + 1))
        if password_matches(username, password):
            return True
        conn.execute("INSERT INTO login_failures (key) SELECT unnest(%s::text[])", (list(limits),))
        conn.execute("DELETE FROM login_failures WHERE failed_at < now() - %s::interval", (window,))
    log.warning("failed login for account %r from %s", username[:64], client_address())
    return False
