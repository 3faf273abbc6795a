"""waitress's per-request warnings reach the journal at most once per interval (no services)."""

from __future__ import annotations

import logging

from mlops_serving import server


def test_queue_depth_warnings_are_held_back_then_counted(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(server.time, "monotonic", lambda: clock[0])
    logger = logging.getLogger("waitress.queue.test")
    logger.addFilter(server.AtMostEvery(60))
    caplog.set_level(logging.WARNING, logger=logger.name)

    for depth in range(1, 6):  # a burst: five warnings within a second
        logger.warning("Task queue depth is %d", depth)
        clock[0] += 0.2
    assert [r.getMessage() for r in caplog.records] == ["Task queue depth is 1"]

    clock[0] += 59.0  # 60.0 s after the first: the next one goes out, with the count
    logger.warning("Task queue depth is %d", 9)
    assert caplog.records[-1].getMessage() == (
        "Task queue depth is 9 (4 more since the last one logged)"
    )
    logger.warning("Task queue depth is %d", 3)
    assert len(caplog.records) == 2


def test_with_no_interval_every_warning_is_logged(caplog):
    logger = logging.getLogger("waitress.queue.test-every")
    logger.addFilter(server.AtMostEvery(0))
    caplog.set_level(logging.WARNING, logger=logger.name)
    for depth in range(3):
        logger.warning("Task queue depth is %d", depth)
    assert len(caplog.records) == 3
