"""The status page's figures and charts, from a Quality as the database gives it (no services)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date, timedelta

from mlops_serving import quality
from mlops_uploads.web import DayOfVersion, Quality

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup) -> ET.Element:
    return ET.fromstring(str(markup))  # noqa: S314 (our own output)


def sample() -> Quality:
    today = date.today()
    confusion = [[0] * 10 for _ in range(10)]
    confusion[7][7], confusion[7][1] = 9, 3
    return Quality(
        days=30,
        per_version_day=[
            DayOfVersion("1", today - timedelta(days=2), 40, 20, 15),
            DayOfVersion("1", today - timedelta(days=1), 10, 0, 0),
            DayOfVersion("2", today - timedelta(days=1), 30, 10, 9),
            DayOfVersion("2", today, 5, 4, 4),
        ],
        confusion=confusion,
        backlog=17,
    )


def test_accuracy_points_carry_the_count_behind_them():
    page = quality.build(sample(), {"1": "data-v2", "2": "data-v3"})
    chart = parse(page.accuracy)
    points = chart.findall(f".//{SVG}g[@class='point']")
    # A day without labelled uploads draws no point (version 1, yesterday).
    assert [p.get("data-version") for p in points] == ["1", "2", "2"]
    titles = [p.find(f"{SVG}circle/{SVG}title").text for p in points]
    assert titles[0].endswith("75.0% right of 20 labelled (15)")
    assert [p.find(f"{SVG}text").text for p in points] == ["20", "10", "4"]


def test_the_legend_lists_the_drawn_versions_in_order_without_gaps():
    today = date.today()
    found = Quality(
        days=30,
        per_version_day=[
            DayOfVersion("10", today, 5, 5, 5),
            DayOfVersion("7", today, 9, 0, 0),  # nothing labelled: no point, no legend row
            DayOfVersion("9", today, 5, 4, 2),
        ],
        confusion=[[0] * 10 for _ in range(10)],
        backlog=0,
    )
    texts = parse(quality.build(found, {}).accuracy).findall(f".//{SVG}text")
    legend = [(t.text, float(t.get("y"))) for t in texts if (t.text or "").startswith("version")]
    assert [name for name, _ in legend] == ["version 9", "version 10"]
    assert legend[1][1] - legend[0][1] == 16, "the next row, not a row further down"


def test_versions_list_their_data_version_and_totals():
    page = quality.build(sample(), {"1": "data-v2"})
    assert page.versions == [("1", "data-v2", 50, 20, 15), ("2", "unknown", 35, 14, 13)]
    assert page.backlog == 17


def test_uploads_per_day_cover_every_day_of_the_window_since_the_first():
    page = quality.build(sample(), {})
    bars = parse(page.uploads_per_day).findall(f".//{SVG}g[@class='bar']")
    assert [bar.find(f"{SVG}text").text for bar in bars] == ["40", "40", "5"]


def test_the_confusion_matrix_shows_the_reviewed_counts():
    chart = parse(quality.build(sample(), {}).confusion)
    titles = [t.text for t in chart.iter(f"{SVG}title")]
    assert "reviewed 7, predicted 1: 3" in titles and "reviewed 7, predicted 7: 9" in titles
    assert len(chart.findall(f"{SVG}rect")) == 100


def test_no_upload_yet_draws_an_empty_week_and_says_so():
    page = quality.build(Quality(30, [], [[0] * 10 for _ in range(10)], 0), {})
    assert "no labelled uploads yet" in str(page.accuracy)
    assert len(parse(page.uploads_per_day).findall(f".//{SVG}g[@class='bar']")) == 7


def test_text_from_the_database_is_escaped():
    hostile = Quality(
        30, [DayOfVersion("<script>x</script>", date.today(), 1, 1, 1)], [[0] * 10] * 10, 0
    )
    page = quality.build(hostile, {})
    assert "<script>" not in str(page.accuracy)
    parse(page.accuracy)  # still well-formed


class CountingPool:
    """A stand-in for the connection pool that counts the queries the cache makes."""

    def __init__(self):
        self.queries = 0

    def connection(self):
        import contextlib

        pool = self

        class Conn:
            def execute(self, *_args):
                pool.queries += 1

                class Rows(list):
                    def fetchall(self):
                        return list(self)

                    def fetchone(self):
                        return (0,)

                return Rows()

        return contextlib.nullcontext(Conn())


class NoMLflow:
    def data_versions(self):
        return {}


def test_the_figures_are_computed_at_most_once_per_refresh_period():
    pool = CountingPool()
    cache = quality.QualityCache(refresh_seconds=3600)
    first = cache.get(pool, NoMLflow())
    assert cache.get(pool, NoMLflow()) is first
    assert pool.queries == 3  # per version and day, the confusion matrix, the backlog
    assert quality.QualityCache(refresh_seconds=0).get(pool, NoMLflow()) is not first
