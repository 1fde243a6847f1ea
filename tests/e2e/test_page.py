"""The station's web page in a real headless Chromium (Python Playwright driving Debian's chromium)."""

import os
import re
import shutil

import pytest

from tests.integration.server import TOKEN, Server
from tests.unit.test_station import png

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("EDGELEARN_REQUIRE_BROWSER"):
        raise RuntimeError("no chromium found: apt-get install chromium (or set CHROMIUM)")
    pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
def page(tmp_path):
    server = Server(tmp_path / "data", "--keep-images")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])  # a synthetic camera
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        context.grant_permissions(["camera"])
        pg = context.new_page()
        pg.console_errors = []
        pg.on("console", lambda m: pg.console_errors.append(m.text) if m.type == "error" else None)
        pg.goto(server.url)
        pg.fill("#token", TOKEN)
        pg.dispatch_event("#token", "change")
        pg.fill("#user", "e2e")
        pg.dispatch_event("#user", "change")
        yield pg
        browser.close()
    server.stop()


def images(tmp_path, colour, n, start=0):
    paths = []
    for i in range(start, start + n):
        path = tmp_path / f"{colour}{i}.png"
        path.write_bytes(png(colour, i))
        paths.append(str(path))
    return paths


def expect_message(page, pattern):
    playwright.expect(page.locator("#message")).to_have_text(re.compile(pattern), timeout=30_000)


def check_photo(page, path):
    with page.expect_response(lambda r: "/api/predict" in r.url):
        page.set_input_files("#photo", path)
    return page.locator("#result-label")


def teach(page, paths, label):
    page.set_input_files("#teach-files", paths)
    page.fill("#teach-label", label)
    page.click("#teach")
    expect_message(page, rf"learned {len(paths)} image")


def test_teach_correct_consolidate_roll_back_and_live_camera(page, tmp_path):
    teach(page, images(tmp_path, "red", 4), "red")
    teach(page, images(tmp_path, "blue", 4), "blue")
    playwright.expect(check_photo(page, images(tmp_path, "blue", 1, start=50)[0])).to_have_text("blue")
    playwright.expect(page.locator("#alternatives li")).to_have_count(1)
    playwright.expect(page.locator("#representatives img").first).to_be_visible()
    playwright.expect(page.locator("#heatmap")).to_be_visible()

    page.click("#consolidate")
    expect_message(page, r"consolidated: version 2")

    # a part it has never seen: predicted as something else, corrected with a new name
    first_green = images(tmp_path, "green", 1, start=60)[0]
    result = check_photo(page, first_green)
    playwright.expect(result).not_to_have_text("green")
    page.fill("#correct-label", "green")
    page.click("#correct")
    expect_message(page, r"learned: this is green")
    playwright.expect(page.locator("#result-label")).to_have_text("green")  # re-checked after learning
    playwright.expect(check_photo(page, images(tmp_path, "green", 1, start=70)[0])).to_have_text("green")
    page.click("#confirm")
    expect_message(page, r"learned: confirmed green")
    playwright.expect(page.locator("#status")).to_contain_text("3 classes")
    page.click("#consolidate")
    expect_message(page, r"consolidated: version 3")

    # roll back to the version before green: it is forgotten
    page.click("#versions button.rollback[data-version='2']")
    expect_message(page, r"rolled back to version 2")
    playwright.expect(page.locator("#status")).to_contain_text("2 classes")
    playwright.expect(check_photo(page, images(tmp_path, "green", 1, start=80)[0])).not_to_have_text("green")

    # the token stays in this tab only; the export (it needs the token) downloads through fetch
    assert page.evaluate("sessionStorage.getItem('edgelearn-token')") == TOKEN
    assert page.evaluate("localStorage.getItem('edgelearn-token')") is None
    with page.expect_download() as download:
        page.click("#export")
    assert download.value.suggested_filename == "knowledge.edge"
    assert os.path.getsize(download.value.path()) > 1000

    # the live camera (Chromium's synthetic one) sends frames by itself
    with page.expect_response(lambda r: "/api/predict" in r.url, timeout=30_000):
        page.click("#camera-start")
    playwright.expect(page.locator("#camera")).to_be_visible()
    page.screenshot(path=str(tmp_path / "station.png"), full_page=True)
    assert (tmp_path / "station.png").stat().st_size > 10_000
    assert not [e for e in page.console_errors if "Content Security Policy" in e]
    if os.environ.get("EDGELEARN_SCREENSHOT"):
        page.screenshot(path=os.environ["EDGELEARN_SCREENSHOT"], full_page=True)


def test_writes_without_the_token_show_the_reason(page, tmp_path):
    page.fill("#token", "")
    page.dispatch_event("#token", "change")
    page.set_input_files("#teach-files", images(tmp_path, "red", 1))
    page.fill("#teach-label", "red")
    page.click("#teach")
    expect_message(page, r"needs the station's token")
    playwright.expect(page.locator("#message")).to_have_class("error")
