"""A person in a real browser (Debian's Chromium, driven by Playwright).

Used by test_browser.py (the web app on this machine) and by molecule/cluster's
people check (the deployed web app, through the edge, with the platform's CA).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless, and quiet on a machine with a closed network.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium(trusted_ca: str | Path | None = None) -> Iterator:
    """A headless Chromium with a home of its own.

    Chromium on Linux takes locally added trust anchors from the NSS database in
    $HOME/.pki/nssdb: with trusted_ca, that database trusts this one CA, as a
    person would after importing it (certutil, Debian's libnss3-tools).
    """
    from playwright.sync_api import sync_playwright

    if not shutil.which("chromium"):
        raise RuntimeError(
            "Debian's chromium is not installed (make test installs it: tools/ensure-dev-packages)"
        )
    with tempfile.TemporaryDirectory(prefix="chromium-home-") as home:
        nssdb = Path(home) / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        certutil = ["certutil", "-d", f"sql:{nssdb}"]
        subprocess.run([*certutil, "-N", "--empty-password"], check=True)
        if trusted_ca:
            subprocess.run(
                [*certutil, "-A", "-t", "C,,", "-n", "platform CA", "-i", str(trusted_ca)],
                check=True,
            )
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, env={**os.environ, "HOME": home}
            )
            try:
                yield browser
            finally:
                browser.close()


def upload_and_give_feedback(
    page, url: str, digit_file: Path, label: int, screenshots: Path | None = None, prefix=""
) -> tuple[str, int]:
    """Upload a digit, read the result, say what it is; (upload id, predicted digit)."""

    def shot(name: str) -> None:
        if screenshots:
            page.screenshot(path=str(screenshots / f"{prefix}{name}.png"), full_page=True)

    page.goto(url + "/")
    shot("1-upload")
    page.set_input_files("#file", str(digit_file))  # choosing a file submits the form
    page.wait_for_url("**/result/*")
    predicted = int(page.inner_text("#digit"))
    assert page.inner_text("#model-version").strip()
    assert page.locator(".bars li").count() == 3
    assert page.eval_on_selector("#seen", "img => img.complete && img.naturalWidth") == 28
    shot("2-result")
    upload_id = page.url.rsplit("/", 1)[1]

    if predicted == label:
        page.click("#correct")
    else:
        page.click(f".feedback button.digit[value='{label}']")
    page.wait_for_selector("#feedback-recorded")
    assert f"is a {label}" in page.inner_text("#feedback-recorded")
    shot("3-feedback")
    return upload_id, predicted
