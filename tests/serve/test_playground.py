"""The playground page in a real headless chromium against the live server: every model is offered,
two adapters stream side by side with their rates, and an error answer is shown in its column.

Debian's chromium and chromedriver drive it; selenium-manager is kept offline so nothing is ever
downloaded. A missing browser fails the test (it is part of the suite, not optional)."""

from __future__ import annotations

import os
import re
import shutil
from unittest import mock

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

PROMPT = "Hello there"
# "12.3 tokens/s · 8 tokens · first token 120 ms"
RATE = re.compile(r"([\d.]+) tokens/s · (\d+) tokens · first token \d+ ms")


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.fail(
            f"chromium ({chromium}) or chromedriver ({chromedriver}) is missing: "
            "run make test (it installs chromium and chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        options.add_argument(arg)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with mock.patch.dict(os.environ, SE_OFFLINE="true"):
        driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        yield driver
    finally:
        driver.quit()


def open_page(driver, server) -> None:
    """Load the page and wait until every served model is offered in every column."""
    driver.get_log("browser")  # drop what an earlier test left
    driver.get(server.url + "/")
    offered = "return [...document.querySelectorAll('#model-0 option')].map(o => o.value)"
    WebDriverWait(driver, 30).until(lambda d: set(server.models) <= set(d.execute_script(offered)))


def fill(driver, element_id: str, text: str) -> None:
    element = driver.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(text)


def choose(driver, models: list[str]) -> None:
    """Put ``models`` in the first columns and leave the other columns empty."""
    for i in range(4):
        picker = Select(driver.find_element(By.ID, f"model-{i}"))
        picker.select_by_value(models[i] if i < len(models) else "")


def column(driver, model: str) -> dict:
    """What a column shows: output text, rate line and error message."""
    return driver.execute_script(
        """
        const out = document.querySelector(`.output[data-model="${arguments[0]}"]`);
        const col = out.closest('.col');
        return {output: out.textContent, rate: col.querySelector('.rate').textContent,
                error: col.querySelector('.error').textContent};""",
        model,
    )


def generate_and_wait(driver) -> None:
    driver.find_element(By.ID, "generate").click()
    # the button is disabled while any column streams and enabled again once all have ended
    WebDriverWait(driver, 60).until(
        lambda d: (
            d.find_element(By.ID, "generate").is_enabled()
            and not d.find_element(By.ID, "stop").is_enabled()
        )
    )


def test_two_adapters_stream_side_by_side(live_server, browser):
    open_page(browser, live_server)
    choose(browser, ["news", "falstaff"])
    fill(browser, "prompt", PROMPT)
    fill(browser, "max_tokens", "8")
    fill(browser, "temperature", "0")
    generate_and_wait(browser)

    for model in ("news", "falstaff"):
        shown = column(browser, model)
        assert shown["error"] == "", (model, shown)
        assert shown["output"].startswith(PROMPT), (model, shown)
        assert len(shown["output"]) > len(PROMPT), (model, shown)  # text beyond the prompt
        rate = RATE.search(shown["rate"])
        assert rate, (model, shown)
        assert float(rate[1]) > 0 and 1 <= int(rate[2]) <= 8, (model, shown)
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_error_answer_is_shown_in_its_column(live_server, browser):
    open_page(browser, live_server)
    choose(browser, ["news"])
    fill(browser, "prompt", PROMPT)
    fill(browser, "max_tokens", "5000")  # over the 64-token context (and the cap): a 400 answer
    generate_and_wait(browser)

    shown = column(browser, "news")
    assert shown["error"] and not shown["error"].startswith("Request failed"), shown
    assert not RATE.search(shown["rate"]), shown
    # Chrome itself logs the 400 as "Failed to load resource"; the page must log nothing
    severe = [
        e
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]
    assert not severe, severe
