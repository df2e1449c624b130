"""A real local space and a real headless Chromium for the console's browser tests.

The space is the example in ``examples/space`` started with :func:`connectors.spaces.space.up`
on free ports in a temporary directory (its own, not the integration suite's: these tests
publish, negotiate and admit, which would change what the integration tests count). Chromium and
chromedriver come from the distribution's packages (``make test`` installs them when missing);
nothing is downloaded at run time. Screenshots go to ``TS_CONSOLE_SCREENSHOTS`` when set, else
to a temporary directory whose path is printed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from connectors.spaces.space import RunningSpace, load_config, up

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "space" / "space.toml"
CHROMIUM = os.environ.get("TS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TS_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSpace]:
    config = dataclasses.replace(
        load_config(EXAMPLE), dir=tmp_path_factory.mktemp("console-space"), base_port=0
    )
    with up(config, timeout=60) as running:
        yield running


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = os.environ.get("TS_CONSOLE_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path_factory.mktemp("console-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-downloads")


@pytest.fixture(scope="module")
def browser(
    tmp_path_factory: pytest.TempPathFactory, downloads: Path
) -> Iterator[webdriver.Chrome]:
    for program in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(program) is None:
            pytest.fail(
                f"{program} is missing: `make test` installs chromium and chromium-driver "
                "from the distribution's packages (apt-get install -y chromium chromium-driver)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_window_size(1280, 900)
        yield driver
    finally:
        driver.quit()
