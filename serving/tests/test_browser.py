"""A person in a real browser (Debian's Chromium, driven by Playwright): upload, feedback, review.

Screenshots of every page go to test-output/.
"""

from __future__ import annotations

import pytest
from browser import chromium, upload_and_give_feedback


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def test_upload_predict_feedback_and_review_in_a_browser(
    web, browser, test_images, output_dir, tmp_path
):
    data, label = next((d, lbl) for d, lbl in test_images if lbl == 3)
    digit_file = tmp_path / "three.png"
    digit_file.write_bytes(data)
    page = browser.new_page(viewport={"width": 1100, "height": 900})

    upload_id, _ = upload_and_give_feedback(page, web.url, digit_file, label, output_dir)

    page.goto(web.url + "/review")
    page.wait_for_url("**/login**")
    page.fill("#username", web.reviewer[0])
    page.fill("#password", "not the password")
    page.click("#login")
    assert "Wrong user name or password" in page.content()
    page.fill("#username", web.reviewer[0])
    page.fill("#password", web.reviewer[1])
    page.click("#login")
    page.wait_for_url("**/review")
    row = page.locator(f"#upload-{upload_id}")
    assert row.count() == 1
    page.screenshot(path=str(output_dir / "4-review.png"), full_page=True)
    row.locator("button.confirm").click()
    page.wait_for_url("**/review?status=pending")
    assert page.locator(f"#upload-{upload_id}").count() == 0, (
        "a confirmed upload leaves the pending list"
    )
    page.goto(web.url + "/review?status=confirmed")
    confirmed = page.locator(f"#upload-{upload_id}")
    assert f"confirmed as {label}" in confirmed.inner_text()
    page.screenshot(path=str(output_dir / "5-confirmed.png"), full_page=True)

    page.goto(web.url + "/status")
    assert page.inner_text("#model-version").strip()
    assert page.inner_text("#data-version").startswith("data-v")
    assert float(page.inner_text("#test-accuracy")) > 0.5
    # The live figures, drawn as charts: this upload's confirmed label is a point today.
    version = page.inner_text("#model-version").strip()
    assert page.locator(f'#accuracy-chart g.point[data-version="{version}"]').count() >= 1
    assert page.locator("#uploads-chart g.bar").count() >= 1
    assert page.locator("#confusion-chart rect").count() == 100
    assert page.locator("#accuracy-chart").bounding_box()["width"] > 300, "drawn, not collapsed"
    page.screenshot(path=str(output_dir / "6-status.png"), full_page=True)
    page.close()


def test_drawing_on_the_canvas_predicts(web, browser, output_dir):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(web.url + "/")
    box = page.locator("#canvas").bounding_box()
    # A "1": one stroke down the middle.
    page.mouse.move(box["x"] + 140, box["y"] + 40)
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(box["x"] + 140, box["y"] + 40 + step * 10)
    page.mouse.up()
    page.screenshot(path=str(output_dir / "7-drawing.png"), full_page=True)
    page.click("#submit")
    page.wait_for_url("**/result/*")
    assert page.inner_text("#digit").strip() in {str(d) for d in range(10)}
    page.screenshot(path=str(output_dir / "8-drawing-result.png"), full_page=True)
    page.close()
