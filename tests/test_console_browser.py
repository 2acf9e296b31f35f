"""The web console in a real browser: Debian's chromium, headless, driven by Selenium through chromium-driver,
against a real coordinator and agent (a fake NVML for the GPUs' health). Log in with a token, see a running
job's log lines arrive, stop it from its page, and see a host's unhealthy GPU.

With GPUCTL_CONSOLE_SCREENSHOTS set to a folder, the job's and the hosts' pages are saved there as PNG files,
wide and narrow, for a person to look at."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import cluster
from tests.real_parts import part_missing
from tests.test_channel import _free_port
from tests.test_gpu_health import XID_79, start_watched_agent, wait_host
from tests.test_services import _service, service_spec

# one line a second, numbered, until stopped
TICKER = (
    "name: ticker\nresources: {gpu: 1}\ncommands:\n"
    '  - for i in $(seq 1 600); do echo "tick $i <b>&"; sleep 1; done\n'
)
WAIT_S = 60.0


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        part_missing("selenium is not installed (pip install -e '.[test]')")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        part_missing("chromium and chromium-driver are not installed (scripts/test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(argument)
    options.add_argument("--disable-dev-shm-usage")  # a container's /dev/shm is small
    options.accept_insecure_certs = True  # the coordinator's certificate is of its own CA
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield chrome
    finally:
        chrome.quit()


async def until(check: Callable[[], Any], what: str) -> Any:
    """Poll the browser (in a thread: the coordinator runs on this loop) until `check` answers truthy. An
    element read while its page is being replaced (a form's answer loading) is read again from the new one."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                with contextlib.suppress(StaleElementReferenceException):
                    found = await asyncio.to_thread(check)
                    if found:
                        return found
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"the browser did not show {what} within {WAIT_S:g} s") from None


def ticks(log: str) -> list[int]:
    """The numbers of the ticker's lines in the log's text (the markup it prints shows as text)."""
    return [int(n) for n in re.findall(r"tick (\d+) <b>&", log)]


async def test_log_in_follow_a_log_stop_the_job_and_see_an_unhealthy_gpu(browser: Any) -> None:
    """Every call into the browser runs in a thread: the coordinator that answers its pages runs on this loop."""
    from selenium.webdriver.common.by import By

    def text(selector: str) -> str:
        return " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, selector))

    def click(selector: str) -> None:
        browser.find_element(By.CSS_SELECTOR, selector).click()

    shots = os.environ.get("GPUCTL_CONSOLE_SCREENSHOTS")
    async with cluster() as c:
        nvml = start_watched_agent(c, "h1")
        job = await c.submit(TICKER)
        running = await c.wait_for(job.id, "running")

        await asyncio.to_thread(browser.get, f"{c.coordinator.url}/ui/jobs/{job.id}")
        assert (await asyncio.to_thread(lambda: browser.current_url)).endswith("/ui/login")  # no session yet
        await asyncio.to_thread(log_in, browser, c.api.config.token)
        await until(lambda: job.id in text("main table"), "the jobs page, listing the job")

        await asyncio.to_thread(click, f'a[href="/ui/jobs/{job.id}"]')
        first = (await until(lambda: ticks(text("#log")), "the log's first lines"))[-1]
        await until(lambda: ticks(text("#log"))[-1] >= first + 2, "two more lines, arriving live")
        (gpu,) = running.gpus
        await until(  # the job's GPU's chart, drawn from the readings its agent sent with its syncs
            lambda: f"GPU {gpu}:" in text("#gpu-charts figcaption"),
            "the job's GPU chart",
        )
        lines = browser.find_elements(By.CSS_SELECTOR, "#gpu-charts svg polyline.util")
        assert lines and all(len(line.get_attribute("points").split()) >= 2 for line in lines)  # drawn
        await asyncio.to_thread(screenshot, browser, shots, "job")

        await asyncio.to_thread(click, ".actions button")
        await until(lambda: text("#job-status") == "stopped", "the job's page to say stopped")
        assert (await c.job(job.id)).status == "stopped"
        assert not await asyncio.to_thread(text, ".actions button")  # nothing left to stop

        nvml.xids.append((gpu, 79))
        await wait_host(c.api, "h1", lambda h: bool(h.unhealthy))
        await asyncio.to_thread(click, 'nav a[href="/ui/hosts"]')
        health = await until(lambda: text("section.card .health"), "the hosts page")
        assert health == f"1 GPU unhealthy: {XID_79}"
        assert await asyncio.to_thread(text, ".block.unhealthy") == str(gpu)  # one GPU a block: its block
        await asyncio.to_thread(screenshot, browser, shots, "hosts")


async def test_a_services_page_cannot_read_the_console_of_who_opens_it(browser: Any) -> None:
    """A service is served on the console's origin, from code any member of its project wrote: its page's
    script must not read the console's pages (their CSRF tokens, which would let it stop jobs and drain hosts
    as its visitor) nor, with the visitor's session, a job's log."""
    from selenium.webdriver.common.by import By

    async with cluster() as c:
        c.start_agent("h1", "2xH100:80GB")
        job = await c.submit(TICKER)
        await c.wait_for(job.id, "running")
        port = _free_port()
        await c.submit_spec(service_spec(_service("probe", port, "auth: false\n")))
        await asyncio.to_thread(browser.get, f"{c.coordinator.url}/ui/login")
        await asyncio.to_thread(log_in, browser, c.api.config.token)
        await until(lambda: browser.current_url.endswith("/ui/jobs"), "the jobs page")
        # the session reads the log from the console's own page
        await asyncio.to_thread(browser.get, f"{c.coordinator.url}/ui/jobs/{job.id}")
        await until(lambda: ticks(browser.find_element(By.ID, "log").text), "the log's first lines")

        probe = f"{c.coordinator.url}/services/default/probe/probe?job={job.id}"

        def probed() -> str:
            """The probe's title once its script ended; "" while the service answers 503 (not ready)."""
            browser.get(probe)
            for _ in range(50):
                if browser.title.startswith("ui:"):
                    return str(browser.title)
                time.sleep(0.1)
            return ""

        assert await until(probed, "the service's page probing the console") == "ui:403 log:401"


def log_in(chrome: Any, token: str) -> None:
    from selenium.webdriver.common.by import By

    chrome.find_element(By.ID, "token").send_keys(token)
    chrome.find_element(By.CSS_SELECTOR, "main form button").click()


def screenshot(chrome: Any, folder: str | None, name: str) -> None:
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    for label, width in (("wide", 1280), ("narrow", 390)):
        chrome.set_window_size(width, 1500)
        chrome.save_screenshot(str(Path(folder) / f"{name}-{label}.png"))
    chrome.set_window_size(1280, 900)
