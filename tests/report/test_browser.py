"""The report in a real browser: every figure loads, nothing is fetched, no console errors.

Needs headless Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it).
Screenshots are saved in the test's temporary folder for a person to look at.
"""

from __future__ import annotations

import pytest

from cnnlab.report import write_report
from tests.report._chromium import Chromium, find_chromium

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs chromium on PATH "
                       "(apt-get install chromium) to render the report"),
]
LOCAL_SCHEMES = ("file:", "data:", "about:")


@pytest.fixture
def browser(tmp_path):
    with Chromium(CHROMIUM, tmp_path / "chromium-profile") as chromium:
        yield chromium


def test_report_renders_with_every_figure_and_no_requests_or_errors(sample_lab, browser,
                                                                    tmp_path):
    page_url = write_report(sample_lab)["index.html"].as_uri()

    desktop = browser.visit(page_url, width=1280, height=900,
                            screenshot=tmp_path / "report-desktop.png", full_page=True)
    phone = browser.visit(page_url, width=390, height=844, mobile=True,
                          screenshot=tmp_path / "report-phone.png")

    for visit in (desktop, phone):
        images = visit.probe["images"]
        assert len(images) == 5
        assert all(image["complete"] and image["naturalWidth"] > 0 for image in images), images
        assert all(image["scheme"] == "data" for image in images)
        assert visit.probe["scripts"] == 0
        assert visit.probe["resources"] == [] or all(
            name.startswith(LOCAL_SCHEMES) for name in visit.probe["resources"])
        external = [url for url in visit.requests if not url.startswith(LOCAL_SCHEMES)]
        assert external == []
        assert visit.console_errors == []
        assert visit.screenshot.stat().st_size > 10_000
    # On a phone the page fits the screen; wide tables scroll inside their own box.
    assert phone.probe["scrollWidth"] <= phone.probe["innerWidth"]


def test_the_browser_check_catches_requests_and_errors(browser, tmp_path):
    """A control: a page that does fetch and fail must be caught, or the test above proves
    nothing. Port 9 refuses the connection at once, so the fetch fails fast."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><img src="http://127.0.0.1:9/x.png">'
                    "<script>console.error('boom')</script>")

    visit = browser.visit(page.as_uri(), width=800, height=600)

    assert "http://127.0.0.1:9/x.png" in visit.requests
    assert any("boom" in error for error in visit.console_errors)
    assert visit.probe["images"][0]["naturalWidth"] == 0
