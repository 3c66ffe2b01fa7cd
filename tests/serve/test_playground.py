"""The playground page in a real headless chromium against the live server: every model is offered,
two adapters stream side by side with their rates, and an error answer is shown in its column; in
chat mode every column keeps its own conversation, each reply the one the API gives for that
column's history, and user and model text is shown as text, never as markup.

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
XSS = '<img src=x onerror="window.xss = 1"><b>bold</b>'
"""User or model text that would run script and add elements if it were ever parsed as HTML."""
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


# ---------------------------------------------------------------------------------- chat mode


def chat_column(driver, model: str) -> dict:
    """What a chat column shows: its turns as (role, text), rate line and error message."""
    return driver.execute_script(
        """
        const chat = document.querySelector(`.chat[data-model="${arguments[0]}"]`);
        const col = chat.closest('.col');
        return {turns: [...chat.querySelectorAll('.turn')].map(
                  t => [t.dataset.role, t.querySelector('.content').textContent]),
                rate: col.querySelector('.rate').textContent,
                error: col.querySelector('.error').textContent};""",
        model,
    )


def send(driver, message: str) -> None:
    fill(driver, "message", message)
    generate_and_wait(driver)


def api_reply(client, model: str, messages: list[dict]) -> str:
    """The live server's own greedy reply to ``messages`` (through the official client, not
    streamed): the page's reference."""
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    return r.choices[0].message.content


def open_chat(driver, server, models: list[str]) -> None:
    open_page(driver, server)
    driver.find_element(By.ID, "mode-chat").click()
    choose(driver, models)
    fill(driver, "max_tokens", "8")
    fill(driver, "temperature", "0")


def test_chat_turns_accumulate_per_column(live_server, browser, client):
    open_chat(browser, live_server, ["tiny-base", "news"])
    assert browser.find_element(By.ID, "message").is_displayed()
    assert not browser.find_element(By.ID, "prompt").is_displayed()
    system, first, second = "You are terse.", "Hello there", "Tell me more"
    fill(browser, "system", system)
    send(browser, first)
    assert browser.find_element(By.ID, "message").get_attribute("value") == ""
    send(browser, second)

    replies = {}
    for model in ("tiny-base", "news"):
        shown = chat_column(browser, model)
        assert shown["error"] == "", (model, shown)
        assert RATE.search(shown["rate"]), (model, shown)
        roles = [role for role, _ in shown["turns"]]
        assert roles == ["user", "assistant", "user", "assistant"], (model, shown)
        assert [shown["turns"][0][1], shown["turns"][2][1]] == [first, second], (model, shown)
        # the reference: the API itself, given the system text and the column's own
        # conversation; the page keeps a reply without the space the template puts after
        # "Assistant:"
        history = [{"role": "system", "content": system}, {"role": "user", "content": first}]
        reply = api_reply(client, model, history).strip()
        assert shown["turns"][1][1] == reply, (model, shown)
        history += [{"role": "assistant", "content": reply}, {"role": "user", "content": second}]
        reply = api_reply(client, model, history).strip()
        assert shown["turns"][3][1] == reply, (model, shown)
        replies[model] = [shown["turns"][1][1], shown["turns"][3][1]]
    # the adapter answers otherwise than the base: the columns' conversations are their own
    assert replies["tiny-base"] != replies["news"], replies
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe

    browser.find_element(By.ID, "new_chat").click()
    assert chat_column(browser, "news")["turns"] == []
    # back in text mode, its controls show and the chat's do not
    browser.find_element(By.ID, "mode-text").click()
    assert browser.find_element(By.ID, "prompt").is_displayed()
    assert not browser.find_element(By.ID, "new_chat").is_displayed()


def test_chat_error_is_shown_and_the_conversation_kept(live_server, browser):
    open_chat(browser, live_server, ["news"])
    fill(browser, "max_tokens", "5000")  # over the 64-token context (and the cap): a 400 answer
    send(browser, PROMPT)

    shown = chat_column(browser, "news")
    assert shown["error"] and not shown["error"].startswith("Request failed"), shown
    assert shown["turns"] == [], shown  # the failed turn is not part of the conversation
    # no column took the message: it is back in the box, to be sent again
    assert browser.find_element(By.ID, "message").get_attribute("value") == PROMPT


# a stand-in for the server's streams: answers made of markup (a tiny random model will not write
# it), in the completions or the chat shape; every request body is kept in window.sent
FAKE_SERVER = r"""
const answer = " " + arguments[0];
window.sent = [];
window.fetch = async (url, init) => {
  window.sent.push(JSON.parse(init.body));
  const chunks = url.includes("chat")
    ? [{choices: [{index: 0, delta: {role: "assistant", content: ""}}]},
       {choices: [{index: 0, delta: {content: answer}, finish_reason: "stop"}]}]
    : [{choices: [{index: 0, text: answer, finish_reason: "stop"}]}];
  const body = chunks.map((c) => `data: ${JSON.stringify(c)}\n\n`).join("") + "data: [DONE]\n\n";
  return new Response(body, {headers: {"Content-Type": "text/event-stream"}});
};
"""


def no_markup(driver) -> None:
    """Nothing was parsed as HTML: no script ran and no element was made from the text."""
    found = "return [window.xss, document.querySelectorAll('#columns img, #columns b').length]"
    assert driver.execute_script(found) == [None, 0]


def test_user_and_model_text_is_text_not_markup(live_server, browser):
    # text mode, a real round trip: the prompt is markup
    open_page(browser, live_server)
    choose(browser, ["news"])
    fill(browser, "prompt", XSS)
    fill(browser, "max_tokens", "4")
    generate_and_wait(browser)
    shown = column(browser, "news")
    assert shown["error"] == "" and shown["output"].startswith(XSS), shown
    no_markup(browser)

    # chat mode, a real round trip: the message is markup
    open_chat(browser, live_server, ["news"])
    send(browser, XSS)
    shown = chat_column(browser, "news")
    assert shown["error"] == "" and shown["turns"][0] == ["user", XSS], shown
    no_markup(browser)

    # then the answers are markup, in both modes
    browser.execute_script(FAKE_SERVER, XSS)
    send(browser, "again")
    shown = chat_column(browser, "news")
    assert shown["error"] == "", shown
    assert shown["turns"][-2:] == [["user", "again"], ["assistant", XSS]], shown
    # the page sent the column's whole conversation, the markup as plain content
    sent = browser.execute_script("return window.sent")[0]["messages"]
    assert sent[0] == {"role": "user", "content": XSS} and sent[-1]["content"] == "again", sent
    browser.find_element(By.ID, "mode-text").click()
    fill(browser, "prompt", PROMPT)
    generate_and_wait(browser)
    assert column(browser, "news")["output"] == PROMPT + " " + XSS
    no_markup(browser)


def test_the_model_list_follows_adapters_loaded_and_unloaded(serve_files, browser, tmp_path):
    """A picker that gets the focus lists the models again: an adapter loaded after the page
    opened is offered without a reload, and one unloaded leaves the list and its column."""
    import json
    import urllib.request

    from serving import start_server, stop_server

    served = start_server(
        serve_files, tmp_path / "serve.log", "--allow-adapter-loading", "--adapter-root", "/"
    )

    def call(path: str, body: dict) -> None:
        req = urllib.request.Request(
            f"{served.url}/v1/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=30).close()

    def offered(picker: str) -> list[str]:
        browser.find_element(By.ID, picker).click()  # the focus
        return browser.execute_script(
            f"return [...document.querySelectorAll('#{picker} option')].map(o => o.value)"
        )

    try:
        open_page(browser, served)
        assert "later" not in offered("model-2")
        call("load_lora_adapter", {"lora_name": "later", "lora_path": str(serve_files["news"])})
        WebDriverWait(browser, 10).until(lambda _: "later" in offered("model-3"))
        choose(browser, ["later"])
        call("unload_lora_adapter", {"lora_name": "later"})
        WebDriverWait(browser, 10).until(lambda _: "later" not in offered("model-1"))
        assert Select(browser.find_element(By.ID, "model-0")).first_selected_option.text == "(none)"
    finally:
        stop_server(served)
