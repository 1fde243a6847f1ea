"""The station's web page in a real headless Chromium (Python Playwright driving Debian's chromium)."""

import contextlib
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


@contextlib.contextmanager
def station_page(tmp_path, width=1280, height=1000, args=("--keep-images",)):
    """A real station and the page on it, token and name entered."""
    server = Server(tmp_path / "data", *args)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])  # a synthetic camera
        context = browser.new_context(viewport={"width": width, "height": height})
        context.grant_permissions(["camera"])
        pg = context.new_page()
        pg.server = server
        pg.on("filechooser", lambda chooser: None)  # choosers stay intercepted: none is missed between waits
        pg.console_errors = []
        pg.on("console", lambda m: pg.console_errors.append(m.text) if m.type == "error" else None)
        pg.goto(server.url)
        pg.fill("#token", TOKEN)
        pg.dispatch_event("#token", "change")
        pg.fill("#user", "e2e")
        pg.dispatch_event("#user", "change")
        try:
            yield pg
        finally:
            browser.close()
            server.stop()


@pytest.fixture
def page(tmp_path):
    with station_page(tmp_path) as pg:
        yield pg


def images(tmp_path, colour, n, start=0):
    paths = []
    for i in range(start, start + n):
        path = tmp_path / f"{colour}{i}.png"
        path.write_bytes(png(colour, i))
        paths.append(str(path))
    return paths


MESSAGES = {"teach": "#teach-form > .message", "result": "#result-bar > .message", "knowledge": "#knowledge > .message",
            "classes": "#classes-panel > .message", "queue": "#queue-panel > .message", "top": "#message"}


def expect_message(page, pattern, where="teach"):
    """The message next to the control that caused it (``where``: a key of MESSAGES or a selector)."""
    playwright.expect(page.locator(MESSAGES.get(where, where))).to_have_text(re.compile(pattern), timeout=30_000)


def check_photo(page, path):
    with page.expect_response(lambda r: "/api/predict" in r.url):
        page.set_input_files("#photo", path)
    return page.locator("#result-label")


def screenshot(page, path):
    """A full-page screenshot for a person to look at: in the test's tmp folder, and in
    $EDGELEARN_SCREENSHOT_DIR when set."""
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("EDGELEARN_SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["EDGELEARN_SCREENSHOT_DIR"], path.name), full_page=True)


def teach(page, paths, label):
    page.set_input_files("#teach-files", paths)
    playwright.expect(page.locator("#teach-picked")).to_contain_text(f"{len(paths)} file")  # shown before teaching
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
    expect_message(page, r"consolidated: version 2", "knowledge")

    # a part it has never seen: predicted as something else, corrected with a new name
    first_green = images(tmp_path, "green", 1, start=60)[0]
    result = check_photo(page, first_green)
    playwright.expect(result).not_to_have_text("green")
    page.fill("#correct-label", "green")
    page.click("#correct")
    expect_message(page, r"learned: this is green", "result")
    playwright.expect(page.locator("#result-label")).to_have_text("green")  # re-checked after learning
    playwright.expect(check_photo(page, images(tmp_path, "green", 1, start=70)[0])).to_have_text("green")
    page.click("#confirm")
    expect_message(page, r"learned: confirmed green", "result")
    playwright.expect(page.locator("#status")).to_contain_text("3 classes")
    page.click("#consolidate")
    expect_message(page, r"consolidated: version 3", "knowledge")

    # roll back to the version before green: it is forgotten
    page.click("#versions button.rollback[data-version='2']")
    page.click("#knowledge .ask button:has-text('Roll back to 2')")  # it asks first
    expect_message(page, r"rolled back to version 2", "knowledge")
    playwright.expect(page.locator("#result-label")).not_to_have_text("green")  # the decision is asked again
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
    expect_message(page, r"needs the station's token: enter it at the top of the page$")  # no developer words
    playwright.expect(page.locator(MESSAGES["teach"])).to_have_class(re.compile(r"\berror\b"))
    playwright.expect(page.locator("#token-state")).to_have_text("no token: you can look, not teach")


def test_entering_the_token_says_whether_it_works(page):
    playwright.expect(page.locator("#token-state")).to_have_text("token OK: you can teach")
    page.fill("#token", "not-the-token-0123456789")
    page.press("#token", "Enter")
    playwright.expect(page.locator("#token-state")).to_have_text("this token is not accepted: check it")


def card(page, name):
    return page.locator(f"#class-cards li.card[data-name='{name}']")


def test_teach_with_a_typo_undo_it_rename_merge_and_delete(page, tmp_path):
    teach(page, images(tmp_path, "red", 5), "red")
    teach(page, images(tmp_path, "blue", 3), "blue")
    playwright.expect(card(page, "red")).to_contain_text("5 examples")
    playwright.expect(card(page, "blue").locator(".hint")).to_contain_text("few examples")
    playwright.expect(card(page, "red").locator(".hint")).to_have_count(0)

    # a typo: undone
    teach(page, images(tmp_path, "green", 2), "gren")
    playwright.expect(card(page, "gren")).to_be_visible()
    page.click("#undo")
    expect_message(page, r"^undone: 2 examples of gren \(taught by e2e\)$")
    playwright.expect(card(page, "gren")).to_have_count(0)

    # a near-duplicate name: the page asks; the worker takes the suggestion
    page.set_input_files("#teach-files", images(tmp_path, "red", 2, start=10))
    page.fill("#teach-label", " RED")
    page.click("#teach")
    playwright.expect(page.locator("#teach-form .ask")).to_contain_text("did you mean 'red'?")
    screenshot(page, tmp_path / "did-you-mean.png")
    page.click("#teach-form .ask button:has-text(\"Use 'red'\")")
    expect_message(page, r"learned 2 images of red")
    playwright.expect(card(page, "red")).to_contain_text("7 examples")
    playwright.expect(card(page, "RED")).to_have_count(0)

    # rename blue -> navy (asked, with a real label), merge navy into red, delete red: each asks first
    card(page, "blue").get_by_role("button", name="Rename").click()
    page.get_by_label("new name").fill("navy")
    page.get_by_label("new name").press("Enter")
    expect_message(page, r"renamed blue to navy", "classes")
    playwright.expect(card(page, "navy")).to_contain_text("3 examples")

    card(page, "navy").get_by_role("button", name="Merge into…").click()
    page.get_by_label("into").select_option("red")
    page.get_by_role("button", name="Merge", exact=True).click()
    expect_message(page, r"merged navy into red", "classes")
    playwright.expect(card(page, "red")).to_contain_text("10 examples")

    card(page, "red").get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Cancel").click()  # changed her mind: nothing happens
    playwright.expect(card(page, "red")).to_be_visible()
    card(page, "red").get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Delete red").click()
    expect_message(page, r"deleted red", "classes")
    playwright.expect(page.locator("#class-cards li.card")).to_have_count(0)
    screenshot(page, tmp_path / "classes.png")



def tab_to(page, selector, presses=80):
    """Press Tab until ``selector`` has the focus: fails if the keyboard cannot reach it."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement?.matches(s) ?? false", selector):
            return
    raise AssertionError(f"Tab never reaches {selector}")


def pick_files_with_keyboard(page, selector, paths):
    tab_to(page, selector)
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(paths)


def test_keyboard_only_teach_and_check(page, tmp_path):
    learn_requests = []
    page.on("request", lambda r: learn_requests.append(r) if r.url.endswith("/api/learn") else None)
    for colour in ("red", "blue"):
        pick_files_with_keyboard(page, "#teach-files", images(tmp_path, colour, 3))
        playwright.expect(page.locator("#teach-picked")).to_contain_text(f"3 files chosen: {colour}0.png")
        tab_to(page, "#teach-label")
        page.keyboard.type(colour)
        page.keyboard.press("Enter")  # Enter submits
        expect_message(page, rf"learned 3 images of {colour}")
    with page.expect_response(lambda r: "/api/predict" in r.url):
        pick_files_with_keyboard(page, "#photo", images(tmp_path, "blue", 1, start=50))
    playwright.expect(page.locator("#result-label")).to_have_text("blue")

    tab_to(page, "#confirm")
    page.keyboard.press("Enter")
    page.keyboard.press("Space")  # a second press on the same frame teaches nothing more
    expect_message(page, r"learned: confirmed blue", "result")
    playwright.expect(page.locator("#confirm")).to_be_disabled()
    playwright.expect(page.locator("#correct")).to_be_disabled()
    assert len(learn_requests) == 3

    tab_to(page, "#undo")
    page.keyboard.press("Enter")
    expect_message(page, r"^undone: 1 example of blue \(confirmed by e2e\)$")
    playwright.expect(page.locator(MESSAGES["result"])).to_have_text("")  # "learned: confirmed blue" is no longer so
    playwright.expect(page.locator("#confirm")).to_be_enabled()

    # the class panel by keyboard: after each change the focus stays in the panel, not back at the top
    tab_to(page, "#class-cards li[data-name='red'] .row button:nth-child(1)")  # Rename
    page.keyboard.press("Enter")
    page.keyboard.press("Control+A")
    page.keyboard.type("red cap")
    page.keyboard.press("Enter")
    expect_message(page, r"renamed red to red cap", "classes")
    playwright.expect(page.locator(MESSAGES["classes"])).to_be_focused()
    tab_to(page, "#class-cards li[data-name='blue'] .row button:nth-child(2)")  # Merge into…
    page.keyboard.press("Enter")
    playwright.expect(page.get_by_label("into")).to_be_focused()
    page.keyboard.press("Enter")  # Enter on the list merges, as in the other questions
    expect_message(page, r"merged blue into red cap", "classes")
    playwright.expect(page.locator(MESSAGES["classes"])).to_be_focused()
    tab_to(page, "#import-file")  # the rest of the page is reachable too


def test_phone_width_has_no_sideways_scrolling(tmp_path):
    with station_page(tmp_path, width=390, height=844) as page:
        teach(page, images(tmp_path, "red", 3), "a rather long class name for a part")
        teach(page, images(tmp_path, "blue", 3), "bolt")
        playwright.expect(check_photo(page, images(tmp_path, "blue", 1, start=50)[0])).to_have_text("bolt")
        page.click("#consolidate")  # a version that holds bolt: the rename's changes are relative to it
        expect_message(page, r"consolidated: version 2", "knowledge")
        card(page, "bolt").get_by_role("button", name="Rename").click()
        page.get_by_label("new name").fill("bolt M8")
        page.get_by_label("new name").press("Enter")
        expect_message(page, r"renamed bolt to bolt M8", "classes")
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        playwright.expect(page.locator("#confirm")).to_be_in_viewport()  # the result bar stays on screen
        playwright.expect(page.locator("#bar-result")).to_contain_text("bolt M8")
        small = page.evaluate("""() => [...document.querySelectorAll(
                'button, .file, a.button, input:not([type=checkbox]), select')]
            .filter((e) => e.offsetParent !== null && e.getBoundingClientRect().height < 44)
            .map((e) => e.id || e.textContent)""")
        assert small == []  # touch targets of at least 44 px
        cells = page.locator("#versions tbody tr").first.locator("td")  # what the rename changed, and who
        playwright.expect(cells.nth(2)).to_contain_text("by e2e")
        playwright.expect(cells.nth(3)).to_have_text("renamed bolt → bolt M8")
        created = page.server.client.get("/api/versions").json()["versions"][0]["created_at"]
        playwright.expect(cells.nth(1)).to_have_text(page.evaluate("(iso) => new Date(iso).toLocaleString()", created))
        screenshot(page, tmp_path / "phone.png")


def test_unknown_parts_and_the_labelling_queue(tmp_path):
    with station_page(tmp_path, args=("--keep-images", "--queue-below", "2")) as page:
        # 12 examples a class: enough held-out evidence for the station to call unfamiliar things unknown
        teach(page, images(tmp_path, "red", 12), "red")
        teach(page, images(tmp_path, "blue", 12), "blue")

        # a part it never learned: the closest class with its probability, and an honest word on certainty
        check_photo(page, images(tmp_path, "green", 1, start=60)[0])
        playwright.expect(page.locator("#decision p").first).to_have_text(re.compile(r"^unknown — closest: \w+ \d+ %$"))
        playwright.expect(page.locator("#calibration")).to_have_text(
            re.compile(r"^certainty not calibrated yet \(\d+/20\)$"))
        playwright.expect(page.locator("#confirm")).to_be_disabled()
        closest = page.locator("#alternatives button").first
        name = closest.get_attribute("data-label")
        closest.click()  # a next-best class: corrected in one click
        expect_message(page, rf"learned: this is {name}", "result")
        playwright.expect(page.locator("#alternatives button").first).to_be_disabled()  # once per frame

        # the queue fills by itself, with the suggestion filled in
        check_photo(page, images(tmp_path, "green", 1, start=61)[0])
        item = page.locator("#queue li.queue-item").first
        playwright.expect(item).to_be_visible(timeout=20_000)
        suggested = item.get_by_label("class").input_value()
        assert suggested in ("red", "blue")
        assert item.locator("img").bounding_box()["height"] >= 150  # a large image
        item.get_by_label("class").fill("")
        item.get_by_role("button", name="Learn").click()  # an empty label is a mistake, not a dismissal
        playwright.expect(item.locator(".message")).to_have_text("type the class first (or press Dismiss)")
        other = {"red": "blue", "blue": "red"}[suggested]
        card(page, other).get_by_role("button", name="Rename").click()
        page.get_by_label("new name").fill(f"{other} 2")
        page.get_by_label("new name").press("Enter")
        expect_message(page, rf"renamed {other} to {other} 2", "classes")
        playwright.expect(item.locator(".keys")).to_have_text(f"1 {suggested} · 2 {other} 2")  # today's names
        item.focus()
        page.keyboard.press("2")  # number keys: the top classes
        playwright.expect(item.get_by_label("class")).to_have_value(f"{other} 2")
        item.get_by_label("class").fill("green")
        item.get_by_label("class").press("Enter")
        expect_message(page, r"learned green", "queue")
        # the decision is asked again: green, a class only now, is its answer or (few examples) its closest
        playwright.expect(page.locator("#decision")).to_contain_text("green")
        playwright.expect(page.locator("#status")).to_contain_text("3 classes")
        screenshot(page, tmp_path / "queue.png")


def test_the_station_camera_is_a_source_its_frames_decided_and_corrected_on_the_page(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    with station_page(tmp_path, args=("--keep-images", "--camera", str(drop), "--station", "line-2")) as page:
        page.server.teach("red", "blue")
        page.click("#station-camera")  # offered because /api/camera answers
        (drop / "part1.png").write_bytes(png("red", 90))  # files already there are not new: dropped after

        playwright.expect(page.locator("#station-camera-state")).to_contain_text("sent to the line: frame 1",
                                                                                  timeout=30_000)
        playwright.expect(page.locator("#shot")).to_be_visible()
        playwright.expect(page.locator("#result-label")).to_have_text(re.compile("red|blue"))
        page.fill("#correct-label", "green")
        page.click("#correct")

        expect_message(page, r"learned: this is green", "result")
        kinds = [e["kind"] for e in page.server.client.get("/api/events", headers=page.server.auth()).json()["events"]]
        assert kinds[0] == "correct" and not [e for e in page.console_errors if "Content Security Policy" in e]
