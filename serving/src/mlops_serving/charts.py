"""Small SVG charts drawn on the server: no JavaScript, no CDN, no plotting library.

Each function returns markup safe to put in a page (every text is escaped).
Hovering a point or a bar shows its figures (an SVG <title>).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 120, 16, 40
# Colour-blind safe (Okabe and Ito); a version keeps its colour by its number.
COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")


def _svg(element_id: str, label: str, body: list[str], width: int = WIDTH, height: int = HEIGHT):
    # Every text put into `body` was escaped, or is a number: the whole is safe.
    return Markup(  # noqa: S704
        f'<svg id="{escape(element_id)}" class="chart" role="img" aria-label="{escape(label)}"'
        f' viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
        ' xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def _day_axis(days: Sequence[date], x) -> list[str]:
    body = []
    step = max(1, len(days) // 8)  # at most about eight dates written under the axis
    for i, day in enumerate(days):
        if i % step == 0 or i == len(days) - 1:
            body.append(
                f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                f"{escape(day.strftime('%m-%d'))}</text>"
            )
    return body


def colour(version: str) -> str:
    return COLOURS[int(version) % len(COLOURS)] if version.isdigit() else COLOURS[-1]


def accuracy_chart(
    element_id: str, days: Sequence[date], series: dict[str, dict[date, tuple[int, int]]]
) -> Markup:
    """Accuracy per model version and day: series[version][day] = (right, labelled).

    Each point is written with the number of labelled uploads behind it.
    """
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (len(days) - 1) if len(days) > 1 else plot_w / 2)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value)

    body = [
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa"'
        ' stroke="#ccc"/>'
    ]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        body.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"'
            ' stroke="#e4e4e4"/>'
            f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.0%}</text>'
        )
    body += _day_axis(days, x)
    index = {day: i for i, day in enumerate(days)}
    drawn = 0  # versions drawn so far: each gets the next legend row
    for version, by_day in sorted(series.items(), key=lambda item: (len(item[0]), item[0])):
        points = [
            (index[day], right / labelled, right, labelled)
            for day, (right, labelled) in sorted(by_day.items())
            if labelled and day in index
        ]
        if not points:
            continue
        stroke = colour(version)
        if len(points) > 1:
            path = " ".join(f"{x(i):.1f},{y(acc):.1f}" for i, acc, _, _ in points)
            body.append(
                f'<polyline points="{path}" fill="none" stroke="{stroke}" stroke-width="2"/>'
            )
        for i, acc, right, labelled in points:
            body.append(
                f'<g class="point" data-version="{escape(version)}">'
                f'<circle cx="{x(i):.1f}" cy="{y(acc):.1f}" r="4" fill="{stroke}">'
                f"<title>version {escape(version)}, {days[i].isoformat()}: {acc:.1%}"
                f" right of {labelled} labelled ({right})</title></circle>"
                f'<text x="{x(i):.1f}" y="{y(acc) - 8:.1f}" text-anchor="middle"'
                f' fill="{stroke}">{labelled}</text></g>'
            )
        legend_y = TOP + 14 + 16 * drawn
        drawn += 1
        body.append(
            f'<rect x="{WIDTH - RIGHT + 12}" y="{legend_y - 9}" width="10" height="10"'
            f' fill="{stroke}"/><text x="{WIDTH - RIGHT + 28}" y="{legend_y}">'
            f"version {escape(version)}</text>"
        )
    if not drawn:
        body.append(
            f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" text-anchor="middle"'
            ' fill="#777">no labelled uploads yet</text>'
        )
    return _svg(element_id, "Accuracy per model version and day, on labelled uploads", body)


def bar_chart(element_id: str, label: str, bars: Sequence[tuple[date, int]]) -> Markup:
    """One bar per day, its count written above it."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = max((count for _, count in bars), default=0) or 1
    slot = plot_w / max(len(bars), 1)

    def x(i: int) -> float:
        return LEFT + slot * (i + 0.5)

    body = [
        f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"'
        ' stroke="#999"/>'
    ]
    for i, (day, count) in enumerate(bars):
        height = plot_h * count / top
        body.append(
            f'<g class="bar"><rect x="{x(i) - slot * 0.35:.1f}" y="{TOP + plot_h - height:.1f}"'
            f' width="{slot * 0.7:.1f}" height="{height:.1f}" fill="{COLOURS[0]}">'
            f"<title>{day.isoformat()}: {count}</title></rect>"
            f'<text x="{x(i):.1f}" y="{TOP + plot_h - height - 4:.1f}" text-anchor="middle">'
            f"{count}</text></g>"
        )
    body += _day_axis([day for day, _ in bars], x)
    return _svg(element_id, label, body)


def confusion_chart(element_id: str, matrix: Sequence[Sequence[int]]) -> Markup:
    """A heat map: rows the digit a reviewer saw, columns the model's prediction."""
    cell, left, top = 22, 40, 34
    size = left + 10 * cell + 8
    peak = max((count for row in matrix for count in row), default=0) or 1
    body = [
        f'<text x="{left + 5 * cell}" y="12" text-anchor="middle">predicted</text>',
        f'<text x="10" y="{top + 5 * cell}" text-anchor="middle"'
        f' transform="rotate(-90 10 {top + 5 * cell})">reviewed</text>',
    ]
    for digit in range(10):
        body.append(
            f'<text x="{left + cell * digit + cell / 2}" y="{top - 6}" text-anchor="middle">'
            f"{digit}</text>"
            f'<text x="{left - 6}" y="{top + cell * digit + cell / 2 + 4}" text-anchor="end">'
            f"{digit}</text>"
        )
    for true, row in enumerate(matrix):
        for predicted, count in enumerate(row):
            shade = count / peak
            fill = f"rgb({int(255 - 255 * shade)},{int(255 - 141 * shade)},{int(255 - 77 * shade)})"
            text = "#fff" if shade > 0.5 else "#333"
            body.append(
                f'<rect x="{left + cell * predicted}" y="{top + cell * true}" width="{cell}"'
                f' height="{cell}" fill="{fill}" stroke="#eee"><title>reviewed {true},'
                f" predicted {predicted}: {count}</title></rect>"
                + (
                    f'<text x="{left + cell * predicted + cell / 2}"'
                    f' y="{top + cell * true + cell / 2 + 4}" text-anchor="middle"'
                    f' fill="{text}">{count}</text>'
                    if count
                    else ""
                )
            )
    return _svg(
        element_id,
        "Confusion matrix of the reviewed uploads",
        body,
        width=size,
        height=top + 10 * cell + 8,
    )
