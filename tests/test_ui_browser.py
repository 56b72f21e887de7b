"""GET /ui in a real browser: Debian's Chromium, headless, driven by Selenium through chromedriver, against the API
serving the state file that the daemon writes from the simulated exchange.

The page must show as many symbols as /funding/health, follow the state file within 3 s, and sort by rate.
A screenshot is kept in .cache/artifacts/ (its path is printed).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import funding_state
import pytest
from test_api_support import REPO, record, short_tempdir, start_api, wait_until, write_state
from test_daemon import daemon_factory  # noqa: F401  (fixture)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = REPO / ".cache" / "artifacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


@pytest.fixture
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Chromium is missing: scripts/test.sh installs it (apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument("--user-data-dir=" + profile)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def live_api(simulator_factory, daemon_factory, tmp_path):  # noqa: F811
    """The daemon on the simulator (700 contracts, pushes every 0.2 s) writing the state file the API serves."""
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, state_file=tmp_path / "state.json")
    daemon.wait_for_symbols(600)
    api = start_api(daemon.state_file, env={"FUNDING_API_WORKERS": "2"})
    try:
        yield sim, daemon, api
    finally:
        api.close()


def page_rows(driver) -> list:
    """[(symbol, updatedAt, rate)] in the table's order, read in one script (one consistent moment)."""
    script = (
        "return Array.from(document.querySelectorAll('#funding tbody tr')).map("
        "tr => [tr.dataset.symbol, Number(tr.dataset.updatedAt), Number(tr.dataset.rate)]);"
    )
    return driver.execute_script(script)


def test_live_page_shows_every_symbol_follows_the_state_file_and_sorts_by_rate(browser, live_api):
    sim, daemon, api = live_api
    browser.get(api.url("/ui"))
    assert browser.title == "Binance funding rates"

    # The same symbol count as /funding/health (the daemon may still be adding the last symbols: wait for agreement).
    def counts_agree():
        shown = browser.find_element(By.ID, "row-count").text
        return shown.isdigit() and int(shown) == api.get("/funding/health").json()["symbolCount"] and int(shown)

    count = wait_until(counts_agree, deadline=15)
    assert count and count >= 600, browser.find_element(By.ID, "row-count").text
    assert browser.find_element(By.ID, "health-status").text == "healthy"
    assert not browser.find_element(By.ID, "banner").is_displayed()

    # A change in the state file shows in the table within 3 s: the row carries the file's updatedAt (or newer).
    record = funding_state.read_state(str(daemon.state_file))["funding_state"]["BTCUSDT"]
    written = time.monotonic()

    def row_caught_up():
        return any(symbol == "BTCUSDT" and updated >= record["updatedAt"] for symbol, updated, _ in page_rows(browser))

    assert wait_until(row_caught_up, deadline=5, interval=0.05)
    assert time.monotonic() - written < 3.0, "the page took %.2f s" % (time.monotonic() - written)

    # Sorting by rate, with the simulator's values frozen so the order cannot move under the check.
    sim.set_fault("freeze")
    rate_header = browser.find_element(By.CSS_SELECTOR, 'th[data-key="fundingRate"]')
    rate_header.click()
    assert rate_header.get_attribute("aria-sort") == "ascending"

    def sorted_by_rate(direction: int):
        rates = [rate for _, _, rate in page_rows(browser)]
        return len(rates) == count and all(direction * (b - a) >= 0 for a, b in zip(rates, rates[1:]))

    assert wait_until(lambda: sorted_by_rate(1), deadline=5)
    rate_header.click()
    assert rate_header.get_attribute("aria-sort") == "descending"
    assert wait_until(lambda: sorted_by_rate(-1), deadline=5)
    rates = [rate for _, _, rate in page_rows(browser)]
    assert rates[0] > rates[-1], "the simulator's rates differ, so a descending sort puts the largest first"

    # The filter narrows the table to matching symbols.
    browser.find_element(By.ID, "filter").send_keys("btc")
    assert wait_until(lambda: browser.find_element(By.ID, "row-count").text == str(
        sum(1 for symbol, _, _ in page_rows(browser) if "BTC" in symbol)))

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.find_element(By.ID, "filter").clear()
    browser.execute_script("document.getElementById('filter').dispatchEvent(new Event('input'))")
    time.sleep(0.5)
    screenshot = ARTIFACTS / "ui.png"
    assert browser.save_screenshot(str(screenshot))
    print("screenshot of /ui: %s" % screenshot)


def test_page_is_served_with_a_strict_content_security_policy_and_no_inline_script(live_api):
    _, _, api = live_api
    page = api.get("/ui")
    assert page.status == 200 and page.header("content-type").startswith("text/html")
    policy = page.header("content-security-policy")
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
    html = page.body.decode("utf-8")
    assert "<script>" not in html and "style=" not in html and "http" not in html.replace("http-equiv", "")
    for asset, kind in (("/ui/funding_ui.js", "text/javascript"), ("/ui/funding_ui.css", "text/css")):
        reply = api.get(asset)
        assert reply.status == 200 and reply.header("content-type").startswith(kind)
    assert api.get("/ui/nope.js").status == 404


def test_stale_rows_are_greyed_and_an_unhealthy_service_shows_a_banner(browser):
    """A state file written here: two fresh symbols and one older than the stale threshold, then all stale."""
    workdir = short_tempdir()
    state_file = Path(workdir) / "state.json"
    now = time.time()
    write_state(state_file, {"BTCUSDT": record(now), "ETHUSDT": record(now), "OLDUSDT": record(now, age=400.0)})
    api = start_api(state_file, workdir=workdir, env={"FUNDING_API_WORKERS": "1", "FUNDING_STALE_SECONDS": "300"})
    try:
        browser.get(api.url("/ui"))

        def stale_rows():
            return browser.execute_script(
                "return Array.from(document.querySelectorAll('#funding tbody tr.stale')).map(tr => tr.dataset.symbol);"
            )

        assert wait_until(lambda: stale_rows() == ["OLDUSDT"], deadline=10), stale_rows()
        banner = browser.find_element(By.ID, "banner")
        assert not banner.is_displayed()
        # Every symbol stale: the service is unhealthy, the banner says why.
        write_state(state_file, {s: record(now, age=400.0) for s in ("BTCUSDT", "ETHUSDT", "OLDUSDT")})
        assert wait_until(banner.is_displayed, deadline=10)
        assert "unhealthy" in banner.text and "stale" in banner.text
        assert browser.find_element(By.ID, "health-status").text == "unhealthy"
        assert wait_until(lambda: len(stale_rows()) == 3, deadline=5)
        # Fresh again: the banner goes.
        write_state(state_file, {s: record(time.time()) for s in ("BTCUSDT", "ETHUSDT", "OLDUSDT")})
        assert wait_until(lambda: not banner.is_displayed(), deadline=10)
        assert wait_until(lambda: stale_rows() == [], deadline=5)
    finally:
        api.close()
