"""The page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium): log in, see the site
charging, change a mode and see the setpoint follow without a reload, add a token, download the CSV; the readers
live, and "present a card" when the front allows it."""
import os
import shutil

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from evc.reader.link import SerialLink
from evc.sim.rfid import SimLineReader
from evc.testing import wait_for
from web_helpers import PASSWORDS, Rig

CHROMEDRIVER = "/usr/bin/chromedriver"


def browser(download_dir):
    if not os.path.exists(CHROMEDRIVER):
        if shutil.which("apt-get") is None:
            pytest.skip("chromium-driver is not installed and apt-get is not available to install it")
        pytest.fail("chromium-driver is missing: `make test` installs Debian's chromium and chromium-driver")
    selenium = pytest.importorskip("selenium", reason="selenium is in the test extra: pip install -e '.[test]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1000"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                           "download.prompt_for_download": False})
    assert selenium
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def select_mode(driver, mode):
    """Choose `mode` in s1's mode menu (the card is rebuilt on every change, so find it and choose at once)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    for _ in range(20):
        try:
            Select(driver.find_element(By.CSS_SELECTOR, "#charger-s1 select.mode")).select_by_value(mode)
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError("s1's mode menu kept changing under the test")


def in_thread(fn, *args):
    return threads.deferToThread(fn, *args)


async def until(driver, script, what, timeout_s=15):
    """Wait until `script` (JS returning a value) is truthy in the page."""
    return await wait_for(lambda: in_thread(driver.execute_script, script), timeout_s, what, poll_s=0.1)


@pytest_twisted.ensureDeferred
async def test_the_page_logs_in_shows_the_site_live_and_acts(rig, tmp_path):
    driver = await in_thread(browser, tmp_path)
    try:
        from selenium.webdriver.common.by import By
        await in_thread(driver.get, rig.base + "/")
        await until(driver, "return !document.querySelector('#login').hidden", "the login form")

        def log_in():
            driver.find_element(By.ID, "login-user").send_keys("alice")
            driver.find_element(By.ID, "login-password").send_keys(PASSWORDS["alice"])
            driver.find_element(By.ID, "login-submit").click()
        await in_thread(log_in)
        await until(driver, "return document.querySelector('#live').textContent === 'live'", "the live stream")
        await until(driver, "return document.querySelector('#charger-s1 .status').textContent === 'plugged'",
                    "s1 with a car plugged")
        await in_thread(driver.execute_script, "window.noReload = 1")
        # The grid meter per phase against control's limit.
        text = await in_thread(driver.execute_script, "return document.querySelector('#grid-phases').textContent")
        assert "3.0 A / 20 A" in text

        # Mode ON and Start: the car charges at the setpoint control gives it.
        await in_thread(select_mode, driver, "ON")
        await until(driver, "return document.querySelector('#charger-s1 .mode-text').textContent === 'ON'", "mode ON")
        # The mode change restarts charger s1 (it is offline for a moment, and a start then is refused): press Start
        # as a person would, again if the first press came too early.
        await until(driver, """
            const card = document.querySelector('#charger-s1');
            if (card.querySelector('.status').textContent === 'charging') return true;
            const now = Date.now(), start = card.querySelector('button.start');
            if (start && card.dataset.status === 'plugged' && !(window.pressed > now - 2000)) {
                window.pressed = now; start.click(); }
            return false;""", "s1 charging")
        await until(driver, "return parseFloat(document.querySelector('#charger-s1 .setpoint').textContent) >= 6",
                    "a setpoint of 6 A or more")
        assert await rig.get("charger/s1/config/mode") == "ON"
        # Mode OFF: the setpoint drops to 0 on the page, without a reload.
        await in_thread(select_mode, driver, "OFF")
        await until(driver, "return parseFloat(document.querySelector('#charger-s1 .setpoint').textContent) === 0",
                    "the setpoint at 0 A")
        assert await in_thread(driver.execute_script, "return window.noReload") == 1

        # A token added on the page lands in etcd.
        def add_token():
            driver.find_element(By.ID, "token-id").send_keys("04AABBCC")
            driver.find_element(By.ID, "token-owner").send_keys("Carla")
            driver.find_element(By.ID, "token-add").click()
        await in_thread(add_token)
        await until(driver, "return !!document.querySelector('tr[data-token=\"04AABBCC\"]')", "the new token listed")
        assert await rig.get("token/04AABBCC/config/owner") == "Carla"

        # The session history's CSV downloads.
        await until(driver, "return document.querySelectorAll('#history tbody tr').length >= 1", "a session listed")
        await in_thread(lambda: driver.find_element(By.ID, "csv").click())
        path = await wait_for(lambda: next((p for p in tmp_path.glob("*.csv")), None), 15, "the CSV downloaded")
        rows = path.read_text().splitlines()
        assert rows[0].startswith("id,charger,state,id_tag,start_time") and len(rows) >= 2
    finally:
        await in_thread(driver.quit)


@pytest.fixture
def reader_page_rig(etcd_session, etcd_root, monkeypatch):
    """The site with reader r1 (type line, on a simulated reader's TCP tunnel) serving s1, present_cards on."""
    monkeypatch.setattr(SerialLink, "reopen_min_s", 0.05)
    from twisted.internet import reactor
    sim = SimLineReader(reactor)
    port = sim.line.listen(0)
    made = Rig(etcd_session.url, etcd_root, extra={
        "reader/r1/type": "line",
        "reader/r1/config/remote": f"127.0.0.1:{port}",
        "reader/r1/config/charger": "s1",
        "token/1C78F2BF/config/owner": "Bo",
        "token/BADCAFE0/config/status": "Blocked",
        "front/local/config/present_cards": "true",
    })
    made.card_sim = sim
    pytest_twisted.blockon(defer.ensureDeferred(made.start()))
    yield made
    pytest_twisted.blockon(defer.ensureDeferred(made.stop()))
    pytest_twisted.blockon(sim.close())


async def log_in(driver, base, user):
    from selenium.webdriver.common.by import By
    await in_thread(driver.get, base + "/")
    await until(driver, "return !document.querySelector('#login').hidden", "the login form")

    def fill():
        driver.find_element(By.ID, "login-user").send_keys(user)
        driver.find_element(By.ID, "login-password").send_keys(PASSWORDS[user])
        driver.find_element(By.ID, "login-submit").click()
    await in_thread(fill)
    await until(driver, "return document.querySelector('#live').textContent === 'live'", "the live stream")


LAST_CARD = "return (document.querySelector('#reader-r1 .last-card') || {textContent: ''}).textContent"


@pytest_twisted.ensureDeferred
async def test_the_page_shows_the_readers_live_and_presents_a_card(reader_page_rig, tmp_path):
    """Reader r1 with its charger and link; a card at the device shows its answer without a reload; the page's form
    presents a blocked card (refused, the car still waits) and then a good one (s1 authorized)."""
    rig = reader_page_rig
    driver = await in_thread(browser, tmp_path)
    try:
        from selenium.webdriver.common.by import By
        await log_in(driver, rig.base, "alice")
        await until(driver, "const r = document.querySelector('#reader-r1'); return !!r && "
                    "r.querySelector('.status').textContent === 'link up'", "reader r1 with its link up")
        text = await in_thread(driver.execute_script, "return document.querySelector('#reader-r1').textContent")
        assert "line" in text and "s1" in text and "no card yet" in text
        await in_thread(driver.execute_script, "window.noReload = 1")
        s1 = rig.sup.instances[("charger", "s1")].service
        await wait_for(lambda: s1.sessions.session is not None and s1.sessions.session.state == "plugged", 10,
                       "car1 waiting at s1")

        # A card at the device: its answer shows live (a reader event on the stream).
        rig.card_sim.present("BADCAFE0")
        await until(driver, f"{LAST_CARD}.startsWith('BADCAFE0: Blocked at s1')", "the device's card refused")
        assert await in_thread(driver.execute_script,
                               "return document.querySelector('#reader-r1 .last-card').classList.contains('refused')")
        rig.card_sim.remove()
        assert s1.sessions.session.state == "plugged"

        # "Present a card" on the page: the same rules; the good card authorizes the waiting car.
        def present(uid):
            field = driver.find_element(By.CSS_SELECTOR, "#reader-r1 input.present-uid")
            field.clear()
            field.send_keys(uid)
            driver.find_element(By.CSS_SELECTOR, "#reader-r1 button.present-submit").click()
        await in_thread(present, "1C78F2BF")
        await until(driver, f"{LAST_CARD}.startsWith('1C78F2BF: Accepted at s1')", "the page's card accepted")
        assert await in_thread(driver.execute_script,
                               "return document.querySelector('#reader-r1 .last-card').classList.contains('accepted')")
        await wait_for(lambda: s1.sessions.session.state != "plugged", 10, "s1 authorized by the card")
        assert s1.sessions.session.id_tag == "1C78F2BF"
        # A bad UID is refused with the API's sentence, nothing presented.
        await in_thread(present, "XYZ")
        await until(driver, "return document.querySelector('#toast').textContent.includes('not a card')",
                    "the refusal shown")
        assert rig.sup.instances[("reader", "r1")].service.cards == 2
        assert await in_thread(driver.execute_script, "return window.noReload") == 1
    finally:
        await in_thread(driver.quit)


@pytest_twisted.ensureDeferred
async def test_a_viewer_sees_the_readers_but_no_present_form(reader_page_rig, tmp_path):
    rig = reader_page_rig
    driver = await in_thread(browser, tmp_path)
    try:
        await log_in(driver, rig.base, "bob")
        await until(driver, "return !!document.querySelector('#reader-r1 .last-card')", "reader r1 listed")
        shown = await in_thread(driver.execute_script, """
            const f = document.querySelector('#reader-r1 form.present');
            return f ? f.offsetParent !== null : false""")
        assert shown is False
    finally:
        await in_thread(driver.quit)


@pytest_twisted.ensureDeferred
async def test_without_present_cards_the_page_has_no_present_form(rig, tmp_path):
    """The plain rig: no reader there, and present_cards at its default (off): no readers box, no form."""
    driver = await in_thread(browser, tmp_path)
    try:
        await log_in(driver, rig.base, "alice")
        await until(driver, "return !!document.querySelector('#charger-s1')", "the chargers")
        assert await in_thread(driver.execute_script,
                               "return document.querySelector('#readers-box').hidden && "
                               "!document.querySelector('form.present')") is True
    finally:
        await in_thread(driver.quit)
