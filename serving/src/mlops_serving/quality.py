"""How the models do on the users' uploads, for the status page: live accuracy per
version and day, uploads per day, the reviewed confusion matrix, the review backlog,
and how the candidate in shadow mode compares with production.

The figures come from the uploads table (a person's label: the reviewer's, else
the uploader's feedback) and are computed at most once a minute per process:
the status page is public, and its queries read a month of uploads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import date, timedelta

from markupsafe import Markup
from mlops_uploads import shadow as shadowing
from mlops_uploads import web as uploads

from . import charts

WINDOW_DAYS = 30


@dataclass(frozen=True)
class QualityPage:
    accuracy: Markup
    uploads_per_day: Markup
    confusion: Markup
    backlog: int
    # per version seen in the window: (version, data version, predictions, labelled, right)
    versions: list[tuple[str, str, int, int, int]]
    computed_at: float
    shadow: shadowing.ShadowScore | None = None  # the candidate shadowing production


class QualityCache:
    def __init__(self, refresh_seconds: int):
        self.refresh_seconds = refresh_seconds
        self._page: QualityPage | None = None
        self._lock = threading.Lock()

    def get(self, pool, models, shadow=None) -> QualityPage:
        """models: the production ModelHolder; shadow: the candidate's (or None)."""
        candidate = shadow.current if shadow is not None else None
        with self._lock:
            if self._page is None or time.time() - self._page.computed_at >= self.refresh_seconds:
                with pool.connection() as conn:
                    found = uploads.quality(conn, WINDOW_DAYS)
                    shadowed = (
                        shadowing.score(conn, candidate.version) if candidate is not None else None
                    )
                self._page = build(found, models.data_versions(), shadowed)
            return self._page


def build(
    found: uploads.Quality,
    data_versions: dict[str, str],
    shadowed: shadowing.ShadowScore | None = None,
) -> QualityPage:
    today = date.today()
    first = min((row.day for row in found.per_version_day), default=today - timedelta(days=6))
    days = [first + timedelta(days=n) for n in range((today - first).days + 1)]
    series: dict[str, dict[date, tuple[int, int]]] = {}
    per_day: dict[date, int] = dict.fromkeys(days, 0)
    totals: dict[str, list[int]] = {}
    for row in found.per_version_day:
        series.setdefault(row.version, {})[row.day] = (row.right, row.labelled)
        per_day[row.day] = per_day.get(row.day, 0) + row.predictions
        total = totals.setdefault(row.version, [0, 0, 0])
        total[0] += row.predictions
        total[1] += row.labelled
        total[2] += row.right
    return QualityPage(
        accuracy=charts.accuracy_chart("accuracy-chart", days, series),
        uploads_per_day=charts.bar_chart(
            "uploads-chart", "Uploads per day", sorted(per_day.items())
        ),
        confusion=charts.confusion_chart("confusion-chart", found.confusion),
        backlog=found.backlog,
        versions=[
            (version, data_versions.get(version, "unknown"), *totals[version])
            for version in sorted(totals, key=lambda v: (len(v), v))
        ],
        computed_at=time.time(),
        shadow=shadowed,
    )
