"""A screenshot of front/manual's page in headless Chromium (for docs/img/; `make demo` takes one).

    python -m evc.front.manual.screenshot http://127.0.0.1:8080/ docs/img/page.png [--user U --password P]

Needs Debian's chromium + chromium-driver and selenium (the test extra); without them it says so and does nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

CHROMEDRIVER = "/usr/bin/chromedriver"


def missing() -> str | None:
    """Why no screenshot can be taken here, or None."""
    if not os.path.exists(CHROMEDRIVER):
        return f"{CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def take(url: str, path: str, user: str | None = None, password: str | None = None, timeout_s: float = 30.0,
         settle_s: float = 12.0, size=(1100, 1250)) -> None:
    """Open the page (logging in if asked), wait until it is live with its chargers shown, then save a PNG."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={size[0]},{size[1]}", "--hide-scrollbars"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(url)
        deadline = time.monotonic() + timeout_s

        def until(script: str, what: str):
            while not driver.execute_script(script):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the page at {url}: {what} did not happen within {timeout_s:g} s")
                time.sleep(0.2)
        until("return !document.querySelector('#login').hidden || !document.querySelector('#app').hidden",
              "the page loaded")
        if user is not None and not driver.execute_script("return document.querySelector('#login').hidden"):
            driver.find_element(By.ID, "login-user").send_keys(user)
            driver.find_element(By.ID, "login-password").send_keys(password or "")
            driver.find_element(By.ID, "login-submit").click()
        until("return document.querySelector('#live').textContent === 'live' && "
              "document.querySelectorAll('#chargers .card').length > 0", "live with its chargers")
        time.sleep(settle_s)          # a few meter readings for the chart
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        driver.save_screenshot(path)
    finally:
        driver.quit()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evc.front.manual.screenshot", description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("path")
    p.add_argument("--user")
    p.add_argument("--password")
    args = p.parse_args(argv)
    why = missing()
    if why:
        print(f"no screenshot: {why}", file=sys.stderr)
        return 1
    take(args.url, args.path, args.user, args.password)
    print(f"screenshot of {args.url} written to {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
