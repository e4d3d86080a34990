"""Headless Chromium for the tests that open our HTML as a person would: Debian's `chromium` and
`chromium-driver` packages, driven by Selenium (no browser download: the driver and the browser are the
machine's). `.ci/run` installs both and sets PHOTOGENIC_REQUIRE_BROWSER=1: there a missing browser fails
the tests instead of skipping them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_BROWSERS = ("chromium", "chromium-browser", "google-chrome")
REQUIRE_ENV = "PHOTOGENIC_REQUIRE_BROWSER"


def _binaries() -> tuple[str | None, str | None]:
    browser = os.environ.get("PHOTOGENIC_CHROMIUM") or next(filter(None, map(shutil.which, _BROWSERS)), None)
    driver = os.environ.get("PHOTOGENIC_CHROMEDRIVER") or shutil.which("chromedriver")
    return browser, driver


def missing_browser() -> str | None:
    """Why no browser test can run here, or None."""
    browser, driver = _binaries()
    if browser and driver:
        return None
    return "headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)"


@dataclass
class Page:
    """One page open in the browser, with what a person would notice."""

    driver: Any

    def script(self, source: str) -> Any:
        return self.driver.execute_script(source)

    @property
    def title(self) -> str:
        return str(self.driver.title)

    def text(self, css: str) -> str:
        from selenium.webdriver.common.by import By

        return "\n".join(e.text for e in self.driver.find_elements(By.CSS_SELECTOR, css))

    def count(self, css: str) -> int:
        from selenium.webdriver.common.by import By

        return len(self.driver.find_elements(By.CSS_SELECTOR, css))

    def broken_images(self) -> list[str]:
        """Images the browser could not decode or load (by alt text or source)."""
        return list(
            self.script(
                "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
                ".map(i => i.alt || i.src.slice(0, 80));"
            )
        )

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def screenshot(self, path: Path) -> Path:
        """The whole page as a PNG (the window grown to the document's height first)."""
        height = int(self.script("return document.documentElement.scrollHeight;"))
        self.driver.set_window_size(1280, min(max(height + 200, 800), 12000))  # the window's frame
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path


@contextmanager
def start_chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium WebDriver (RuntimeError where there is none)."""
    reason = missing_browser()
    if reason:
        raise RuntimeError(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(driver_path)))
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def chromium() -> Iterator[Any]:
    """`start_chromium` in a test: skipped without a browser (failed under PHOTOGENIC_REQUIRE_BROWSER=1)."""
    reason = missing_browser()
    if reason:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1 requires it")
        pytest.skip(reason)
    with start_chromium() as driver:
        yield driver


@contextmanager
def open_page(url: str) -> Iterator[Page]:
    """`url` loaded in headless Chromium (a `file://` URL for a report on disk)."""
    with chromium() as driver:
        driver.get(url)
        yield Page(driver)
