"""What every blueprint reaches for: the app's state, and an upload by its public id."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import abort, current_app
from mlops_uploads import Upload
from mlops_uploads import web as uploads

if TYPE_CHECKING:
    from .app import State


def state() -> State:
    return current_app.extensions["mlops"]


def upload_or_404(public_id: str) -> Upload:
    with state().pool.connection() as conn:
        row = uploads.get(conn, public_id)
    if row is None:
        abort(404, "no such upload")
    return row
