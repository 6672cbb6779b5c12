"""The dashboard and the demo as a person uses them (item 8): headless Chromium (Debian's
chromium + chromium-driver, driven by selenium) opens the dashboard while ``monitor`` reads two
RTSP test cameras with the bundled caption model, and the demo page with an uploaded photo.

Set STREAMCAP_SCREENSHOTS=DIR to keep the screenshots (docs/ has the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE_CLIP, RtspServer, free_port, read_jsonl

pytestmark = pytest.mark.slow
TOKEN = "browser-test-token-42"
ALERT_WORD = "people"  # in the bundled model's captions of the street clip ("a group of people ...")


def chrome():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("chromium and chromium-driver (Debian) not installed")
    opts = Options()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(driver))


def wait_for(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("STREAMCAP_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def get_json(url: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """``monitor`` on two RTSP cameras with --serve, the bundled caption model, no segmenter
    (the browser checks the page, not the masks), an alert on a caption word."""
    tmp = tmp_path_factory.mktemp("web")
    cams = [RtspServer(SAMPLE_CLIP, mount=f"cam{i}", size=(320, 240)).start() for i in (1, 2)]
    port = free_port()
    log, events = tmp / "run.jsonl", tmp / "events"
    err = open(tmp / "monitor.stderr", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcap", "monitor", cams[0].url, cams[1].url, "--rtsp-transport", "udp",
         "--read-timeout", "3", "--open-timeout", "5", "--watchdog", "6", "--no-segment", "--caption-interval", "1",
         "--log", str(log), "--events-dir", str(events), "--stats-interval", "2", "--duration", "300",
         "--alert-caption", ALERT_WORD, "--alert-cooldown", "5",
         "--serve", f"127.0.0.1:{port}", "--auth-token", TOKEN],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                return get_json(base + "/api/state")
            except OSError:
                assert proc.poll() is None, (tmp / "monitor.stderr").read_text()
                return None
        wait_for("the dashboard to answer", up, 60)
        yield base, log, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        err.close()
        for c in cams:
            c.kill()
    assert proc.returncode in (0, 130), (tmp / "monitor.stderr").read_text()[-3000:]
    text = log.read_text()
    assert TOKEN not in text and TOKEN not in (tmp / "monitor.stderr").read_text()
    assert read_jsonl(log)[-1]["event"] == "end"


@pytest.fixture(scope="module")
def browser():
    driver = chrome()
    yield driver
    driver.quit()


def test_dashboard_live_tiles_captions_and_search(monitored, browser):
    from selenium.webdriver.common.by import By

    base, log, _ = monitored
    browser.get(f"{base}/?token={TOKEN}")
    assert "token" not in browser.current_url  # the token went into a cookie, out of the address
    tiles = wait_for("two camera tiles", lambda: len(browser.find_elements(By.CSS_SELECTOR, ".tile")) == 2
                     and browser.find_elements(By.CSS_SELECTOR, ".tile"), 30)
    names = [t.find_element(By.CSS_SELECTOR, ".name").text for t in tiles]
    assert all(n.startswith("rtsp://") for n in names)
    # the live image arrives and changes
    imgs = [t.find_element(By.CSS_SELECTOR, "img.live") for t in tiles]
    wait_for("live images", lambda: all(browser.execute_script("return arguments[0].naturalWidth", i) == 320
                                        for i in imgs), 60)
    first = imgs[0].screenshot_as_png
    wait_for("the live image to change", lambda: imgs[0].screenshot_as_png != first, 30)
    # status, fps and the caption appear on both tiles
    wait_for("captions on both tiles", lambda: all(t.find_element(By.CSS_SELECTOR, ".caption").text for t in tiles), 120)
    for t in tiles:
        assert t.find_element(By.CSS_SELECTOR, ".status").text == "connected"
        assert " fps" in t.find_element(By.CSS_SELECTOR, ".meta").text
    # the timeline shows caption changes with their snapshots
    wait_for("a timeline thumbnail", lambda: any(
        browser.execute_script("return arguments[0].naturalWidth", i) > 0
        for i in browser.find_elements(By.CSS_SELECTOR, ".timeline .entry img")), 60)
    # a caption that was logged is found by the search box
    shown = next(r["shown"] for r in read_jsonl(log) if r["event"] == "caption" and r.get("changed"))
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys(shown)
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    found = wait_for("search results", lambda: browser.find_elements(By.CSS_SELECTOR, "#results .result"), 30)
    assert any(shown in r.text for r in found)
    screenshot(browser, "dashboard_search.png")


def test_dashboard_shows_an_alert(monitored, browser):
    from selenium.webdriver.common.by import By

    base, log, _ = monitored
    wait_for(f"an alert record (rule: caption has {ALERT_WORD!r})",
             lambda: any(r["event"] == "alert" for r in read_jsonl(log)), 120)
    browser.get(f"{base}/")  # the cookie from the first visit
    alerts = wait_for("an alert on the timeline",
                      lambda: browser.find_elements(By.CSS_SELECTOR, ".timeline .entry.alert"), 30)
    assert "ALERT" in alerts[0].text and ALERT_WORD in alerts[0].text
    screenshot(browser, "dashboard.png")


def test_demo_page_in_a_browser(tmp_path, browser):
    from selenium.webdriver.common.by import By

    port = free_port()
    err = open(tmp_path / "demo.stderr", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamcap", "demo", "--bind", f"127.0.0.1:{port}",
                             "--seg-weights", "random", "--seg-size", "128", "--score-threshold", "0.9"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    try:
        def up():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/demo", timeout=5).status == 200
            except OSError:
                assert proc.poll() is None, (tmp_path / "demo.stderr").read_text()
                return False
        wait_for("the demo server", up, 60)
        browser.get(f"http://127.0.0.1:{port}/")
        assert browser.current_url.endswith("/demo")
        browser.find_element(By.ID, "file").send_keys(str(REPO / "samples" / "dog.jpg"))
        caption = wait_for("the caption", lambda: browser.find_element(By.ID, "caption").text, 180)
        assert caption.startswith("\u201c")
        for box in ("masks", "attention"):
            img = browser.find_element(By.CSS_SELECTOR, f"#{box} img")
            wait_for(f"the {box} image", lambda: browser.execute_script("return arguments[0].naturalWidth", img) > 0, 30)
        screenshot(browser, "demo.png")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        err.close()
    assert proc.returncode == 0


def test_dashboard_shows_cluster_nodes(tmp_path, browser):
    """Under monitor --config/--ray the page shows each node's cameras and whether it answers
    (from /api/state's ``nodes``), and each tile names its node. Fed by the driver's merge code
    with a fake actor's reply, no Ray."""
    from test_cluster_view import _cluster, _line, _reply

    from streamcap.cluster.driver import with_nodes
    from streamcap.web.live import LiveHub
    from streamcap.web.server import WebApp, WebServer

    hub = LiveHub(["door", "yard"])
    app = WebApp(hub=hub)
    mon, st, tap, _ = _cluster(tmp_path, hub=hub)
    tap.subscribe(app.on_record)
    with_nodes(app, mon)
    mon._handle(st, _reply(tmp_path, 1, [_line("source_status", status="connected"),
                                         _line("caption", shown="a man walks", changed=True, frame_index=0)]))
    server = WebServer(app, "127.0.0.1", 0).start()
    try:
        browser.get(server.url)
        from selenium.webdriver.common.by import By

        def nodes_text():
            rows = browser.find_elements(By.CSS_SELECTOR, "#nodes .node")
            return [r.text for r in rows] if rows else None
        rows = wait_for("the node panel", nodes_text, 20)
        assert any(r.startswith("127.0.0.2-aaaaaa: door") and "door answered" in r for r in rows), rows
        meta = wait_for("the door tile's node", lambda: [m.text for m in browser.find_elements(
            By.CSS_SELECTOR, '.tile[data-camera="door"] .meta') if "node 127.0.0.2-aaaaaa" in m.text], 20)
        assert meta
    finally:
        server.close()
