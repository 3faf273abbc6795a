"""After promotion: the new version on trial with the users, and rollback.

When the gate moves `production`, the new version is tagged with the version
it replaced (`previous_production`). Its first `items` labelled predictions (a
person's label: the reviewer's when there is one, else the uploader's
feedback, in the order they were given) are compared with the previous
version's last `items`. When the new version's live accuracy is lower by more
than `margin`, the alias moves back, the version is tagged with why, and the
caller raises the alert. Either way the version is tagged `live_check`, and
is not judged again (nor is the version restored by a rollback).

Before that, in shadow mode, the version that passed the gate holds
`candidate` and predicts beside production on live requests
(mlops_uploads.shadow). judge_candidate() moves `production` to it once it
has `predictions` shadowed predictions, or after `hours`, with what it has:
when, on the shadowed uploads people labelled, it got at least as many right
as production did on the same uploads. Otherwise it is rejected. Either way
the `candidate` alias is removed.

`mlops-flows watch` runs one check (the `watch` flow, on a schedule, does the
same); `mlops-flows rollback` moves the alias back by hand.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlops_uploads import PERSON_LABEL_SQL, PERSON_LABELLED_AT_SQL
from mlops_uploads import shadow as shadowing

from .config import WATCH_ITEMS, WATCH_MARGIN
from .tracking import (
    CANDIDATE,
    PREVIOUS_TAG,
    PRODUCTION,
    SHADOW_STARTED_TAG,
    alias_version,
    production_version,
    tag_promotion,
)

LIVE_TAG = "live_check"

# A person's label for each upload of a version, and when it was given.
LABELLED_SQL = f"""
SELECT label = predicted_label FROM (
    SELECT predicted_label, {PERSON_LABEL_SQL} AS label, {PERSON_LABELLED_AT_SQL} AS labelled_at
    FROM uploads WHERE model_version = %(version)s
) AS labelled
WHERE label IS NOT NULL
ORDER BY labelled_at {{direction}}, predicted_label
LIMIT %(items)s
"""  # noqa: S608 (fixed text)


class RollbackError(ValueError):
    """A rollback by hand that cannot be done (no version to go back to); the command line
    prints it like any bad argument."""


@dataclass(frozen=True)
class LiveScore:
    version: str
    right: int
    labelled: int

    @property
    def accuracy(self) -> float:
        return self.right / self.labelled if self.labelled else float("nan")


@dataclass(frozen=True)
class Check:
    # "none", "waiting", "passed" or "rolled back"; for a candidate: "promoted" or "rejected"
    action: str
    version: str | None
    previous: str | None
    reason: str
    new: LiveScore | None = None
    old: LiveScore | None = None


def live_score(conn: psycopg.Connection, version: str, items: int, first: bool) -> LiveScore:
    """The version's first (or last) `items` labelled predictions."""
    query = LABELLED_SQL.format(direction="ASC" if first else "DESC")
    rights = [row[0] for row in conn.execute(query, {"version": version, "items": items})]
    return LiveScore(version, sum(rights), len(rights))


def check(
    client: MlflowClient,
    conn: psycopg.Connection,
    name: str,
    items: int = WATCH_ITEMS,
    margin: float = WATCH_MARGIN,
) -> Check:
    """Judge the version holding the alias once it has `items` labelled predictions."""
    if items < 1:
        raise ValueError(f"items must be 1 or more, not {items}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be from 0 up to (not including) 1, not {margin}")
    current = production_version(client, name)
    if current is None:
        return Check("none", None, None, "No version holds the alias.")
    version, tags = str(current.version), current.tags or {}
    previous = tags.get(PREVIOUS_TAG)
    if LIVE_TAG in tags:
        return Check("none", version, previous, f"Version {version}: {tags[LIVE_TAG]}")
    if not previous:
        return Check("none", version, None, f"Version {version} replaced no version.")
    new = live_score(conn, version, items, first=True)
    if new.labelled < items:
        return Check(
            "waiting",
            version,
            previous,
            f"Version {version}: {new.labelled} of {items} labelled predictions so far.",
            new,
        )
    old = live_score(conn, previous, items, first=False)
    if old.labelled and new.accuracy < old.accuracy - margin:
        reason = (
            f"Live accuracy of version {version} on its first {new.labelled} labelled predictions:"
            f" {new.accuracy:.3f} < {old.accuracy:.3f} - {margin} (version {previous}, its last"
            f" {old.labelled}): the alias moved back to version {previous}."
        )
        rollback(client, name, version, previous, reason)
        return Check("rolled back", version, previous, reason, new, old)
    compared = (
        f"{new.accuracy:.3f} >= {old.accuracy:.3f} - {margin} (version {previous})"
        if old.labelled
        else f"{new.accuracy:.3f} (version {previous} has no labelled predictions)"
    )
    reason = f"passed: live accuracy on its first {new.labelled} labelled predictions {compared}"
    client.set_model_version_tag(name, version, LIVE_TAG, reason)
    return Check("passed", version, previous, f"Version {version} {reason}.", new, old)


def judge_candidate(
    client: MlflowClient,
    conn: psycopg.Connection,
    name: str,
    predictions: int,
    hours: float,
    now: datetime | None = None,
) -> Check:
    """Decide on the version in shadow mode once it has `predictions` shadowed predictions
    or has shadowed for `hours`."""
    candidate = alias_version(client, name, CANDIDATE)
    if candidate is None:
        return Check("none", None, None, "No version is in shadow mode.")
    version, tags = str(candidate.version), candidate.tags or {}
    current = production_version(client, name)
    production = str(current.version) if current is not None else None
    score = shadowing.score(conn, version)
    started = _shadow_started(tags, candidate.creation_timestamp)
    elapsed = ((now or datetime.now(UTC)) - started).total_seconds() / 3600
    figures = (
        f"{score.shadowed} predictions beside production (agreement {score.agreement:.3f});"
        f" of the {score.labelled} labelled, candidate {score.candidate_right} right,"
        f" production {score.production_right}"
    )
    if score.shadowed < predictions and elapsed < hours:
        return Check(
            "waiting",
            version,
            production,
            f"Version {version} in shadow mode for {elapsed:.1f} h: {figures}. It is decided"
            f" at {predictions} predictions or after {hours:g} h.",
        )
    when = f"after {elapsed:.1f} h" if score.shadowed < predictions else "at enough predictions"
    if production is None or score.not_worse:
        reason = f"Shadow mode {when}: {figures}. Not worse: the alias moves to it."
        if production is not None and production != version:
            client.set_model_version_tag(name, version, PREVIOUS_TAG, production)
        client.set_registered_model_alias(name, PRODUCTION, version)
        outcome, action = "promoted", "promoted"
    else:
        reason = f"Shadow mode {when}: {figures}. Worse: version {production} keeps the alias."
        outcome, action = "rejected in shadow mode", "rejected"
    # After production moved: a web host never sees no candidate and an old production.
    client.delete_registered_model_alias(name, CANDIDATE)
    tag_promotion(client, name, version, outcome, reason)
    return Check(action, version, production, f"Version {version}: {reason}")


def _shadow_started(tags: dict, created_ms: int | None) -> datetime:
    try:
        return datetime.fromisoformat(tags[SHADOW_STARTED_TAG])
    except (KeyError, ValueError):
        return datetime.fromtimestamp((created_ms or 0) / 1000, UTC)


def rollback(client: MlflowClient, name: str, version: str, to: str, reason: str) -> None:
    """Move the alias from `version` back to `to` and say why on both versions."""
    client.set_registered_model_alias(name, PRODUCTION, to)
    client.set_model_version_tag(name, version, "promotion", "rolled back")
    client.set_model_version_tag(name, version, "rollback_reason", reason)
    client.set_model_version_tag(name, version, LIVE_TAG, f"rolled back: {reason}")
    # The restored version is not put on trial again by the next check.
    client.set_model_version_tag(name, to, LIVE_TAG, f"restored by the rollback of {version}")


def rollback_by_hand(client: MlflowClient, name: str, reason: str, to: str | None = None) -> Check:
    current = production_version(client, name)
    if current is None:
        raise RollbackError(f"no version of {name} holds the alias {PRODUCTION}")
    version = str(current.version)
    target = to or (current.tags or {}).get(PREVIOUS_TAG)
    if not target:
        raise RollbackError(
            f"version {version} replaced no version: name the one to go back to (--to)"
        )
    if target == version:
        raise RollbackError(f"version {version} already holds the alias")
    try:
        client.get_model_version(name, target)
    except MlflowException:
        raise RollbackError(f"{name} has no version {target}") from None
    why = f"By hand: {reason}" if reason else "By hand."
    rollback(client, name, version, target, why)
    return Check("rolled back", version, target, why)


def alert(alertmanager_url: str, name: str, result: Check, hours: int = 24) -> None:
    """Raise ModelRolledBack in Alertmanager (it stays active for `hours`)."""
    now = datetime.now(UTC)
    body = [
        {
            "labels": {
                "alertname": "ModelRolledBack",
                "severity": "warning",
                "model": name,
                "version": result.version or "",
            },
            "annotations": {
                "summary": f"{name} version {result.version} was rolled back to {result.previous}",
                "description": result.reason,
            },
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(hours=hours)).isoformat(),
        }
    ]
    request = urllib.request.Request(  # noqa: S310 (the operator's own Alertmanager URL)
        alertmanager_url.rstrip("/") + "/api/v2/alerts",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    # The platform's CA only, where the hosts have one (MLOPS_CA_FILE).
    context = ssl.create_default_context(cafile=os.environ.get("MLOPS_CA_FILE") or None)
    with urllib.request.urlopen(request, timeout=10, context=context) as answer:  # noqa: S310
        answer.read()
