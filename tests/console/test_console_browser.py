"""The console in a real headless Chromium against a real local space: each role's daily work.

In order (the tests share the space and the browser, and build on each other):

1. the operator signs in and admits a new member, whose staff install the credential;
2. the tax bureau (provider) publishes a dataset with a policy (after a refusal by the grade
   floor) and dry-runs a request, seeing the trace;
3. the bank (analyst) negotiates, runs a joint score with progress, downloads the results and the
   receipts, and sees a refusal explained;
4. an auditor verifies the tax bureau's ledger and checks the downloaded receipts.

Each role's main page is saved as a screenshot (see ``conftest.screenshots``).
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from connectors.common.settings import OperatorAnchor, init_node
from connectors.spaces.space import RunningSpace

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TAX_CSV = ROOT / "examples" / "space" / "data" / "tax.csv"
ENTITIES = 60
WAIT = 90.0


def token(space: RunningSpace, name: str) -> str:
    return space[name].layout.admin_token.read_text(encoding="utf-8").strip()


def wait_for(driver: Chrome, what: Callable[[Chrome], Any], timeout: float = WAIT) -> Any:
    try:
        return WebDriverWait(
            driver,
            timeout,
            poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException,),
        ).until(what)
    except TimeoutException:
        seen = driver.find_element(By.TAG_NAME, "main").text
        raise AssertionError(f"timed out; the page shows:\n{seen[-3000:]}") from None


def find(driver: Chrome, css: str, timeout: float = WAIT) -> WebElement:
    def visible(d: Chrome) -> WebElement | bool:
        for el in d.find_elements(By.CSS_SELECTOR, css):
            if el.is_displayed():
                return el
        return False

    found: WebElement = wait_for(driver, visible, timeout)
    return found


def text_appears(driver: Chrome, css: str, text: str, timeout: float = WAIT) -> WebElement:
    def has(d: Chrome) -> WebElement | bool:
        for el in d.find_elements(By.CSS_SELECTOR, css):
            if text in el.text:
                return el
        return False

    found: WebElement = wait_for(driver, has, timeout)
    return found


def set_value(driver: Chrome, element: WebElement, value: str) -> None:
    """Fill a field as typing would end (the page listens to ``input``)."""
    driver.execute_script(
        "arguments[0].value = arguments[1];"
        "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
        element,
        value,
    )


def sign_in(driver: Chrome, space: RunningSpace, name: str, page: str) -> None:
    """Open the node's console on ``page``, signing in with its admin token unless signed in."""
    driver.get(f"{space[name].url}/console/")
    first = find(driver, "#token, #sign-out")
    if first.get_attribute("id") == "token":
        first.send_keys(token(space, name))
        driver.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
        find(driver, "#sign-out")
    driver.get(f"{space[name].url}/console/#{page}")
    find(driver, f'[data-page="{page}"][data-ready="true"]')


def ledger_size_of(space: RunningSpace, name: str) -> int:
    response = httpx.get(
        f"{space[name].url}/management/ledger/events",
        params={"limit": 1},
        headers={"Authorization": f"Bearer {token(space, name)}"},
        timeout=10,
    )
    response.raise_for_status()
    return int(response.json()["size"])


def shoot(driver: Chrome, folder: Path, name: str) -> Path:
    """A full-page screenshot (the window is stretched to the page's height for it)."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1280, min(max(height, 900), 4000))
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.2)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
    return path


@pytest.fixture(scope="module")
def newcomer(space: RunningSpace) -> Iterator[tuple[str, Path]]:
    """A fresh node (an insurer) that is running but not yet admitted."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = init_node(
        space.dir / "insurer",
        name="insurer",
        roles=["consumer"],
        port=port,
        operator=OperatorAnchor.load(space.operator.layout.operator),
    )
    log = (settings.dir / "node.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from connectors.cli.main import main; main()",
            "node",
            "serve",
            "--dir",
            str(settings.dir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{settings.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                tail = (settings.dir / "node.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the insurer's node did not start:\n{tail}")
            time.sleep(0.2)
        yield settings.url, settings.dir
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def test_operator_admits_a_member(
    browser: Chrome, space: RunningSpace, newcomer: tuple[str, Path], screenshots: Path
) -> None:
    url, directory = newcomer
    identity = httpx.get(f"{url}/identity", timeout=10).json()
    assert identity["admitted"] is False

    sign_in(browser, space, "city-centre", "operator")
    text_appears(browser, "[data-page=operator] table", "tax-bureau")
    set_value(browser, find(browser, "textarea[name=identity]"), json.dumps(identity))
    text_appears(browser, "button", "Admit").click()
    credential = find(browser, "textarea[name=credential]").get_attribute("value") or ""
    assert credential
    text_appears(browser, "[data-page=operator] table", "insurer")
    shoot(browser, screenshots, "operator")

    # the insurer's staff install the credential on their own node's console
    browser.get(f"{url}/console/")
    find(browser, "#token").send_keys(
        (directory / "keys" / "admin.token").read_text(encoding="utf-8").strip()
    )
    browser.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
    find(browser, "#sign-out")
    browser.get(f"{url}/console/#node")
    find(browser, '[data-page="node"][data-ready="true"]')
    set_value(browser, find(browser, "textarea[name=credential]"), credential)
    text_appears(browser, "button", "Install credential").click()
    text_appears(browser, "p.ok", "Credential installed")
    assert httpx.get(f"{url}/identity", timeout=10).json()["admitted"] is True


def _provider_files(tmp: Path) -> tuple[Path, Path, dict[str, Any], dict[str, Any]]:
    with TAX_CSV.open(encoding="utf-8") as f:
        ids = [row["uscc"] for row in csv.DictReader(f)][:ENTITIES]
    data = tmp / "risk.csv"
    data.write_text(
        "uscc,risk_index\n"
        + "".join(f"{u},{((i * 37) % 41) / 10 - 2:.2f}\n" for i, u in enumerate(ids)),
        encoding="utf-8",
    )
    entities = tmp / "applicants.csv"
    entities.write_text(
        "uscc,defaulted\n" + "".join(f"{u},{int(i % 7 == 0)}\n" for i, u in enumerate(ids)),
        encoding="utf-8",
    )
    dataset = {
        "id": "tax-risk",
        "title": "Tax risk index per enterprise",
        "tier": "unconditional",
        "keyColumn": "uscc",
        "keyKind": "uscc",
        "responsibility": {"id": "tax-collection", "title": "Tax collection and administration"},
        "resource": {"id": "tax-records", "title": "Enterprise tax records"},
        "table": {
            "name": "tax_risk",
            "fields": [
                {"name": "uscc", "type": "string", "grade": 1},
                {"name": "risk_index", "type": "float", "grade": 3, "bound": 4.0},
            ],
        },
    }
    offer = {
        "@type": "Offer",
        "permission": [
            {
                "action": "use",
                "constraint": [
                    {
                        "leftOperand": "purpose",
                        "operator": "isAnyOf",
                        "rightOperand": ["pre-loan-review"],
                    },
                    {
                        "leftOperand": "computation",
                        "operator": "isAnyOf",
                        "rightOperand": ["score"],
                    },
                    {"leftOperand": "output", "operator": "isAnyOf", "rightOperand": ["score"]},
                    {
                        "leftOperand": "model",
                        "operator": "isAnyOf",
                        "rightOperand": ["analyst-held", "party-held"],
                    },
                    {
                        "leftOperand": "minCohort",
                        "operator": "gteq",
                        "rightOperand": {"@value": "10", "@type": "xsd:integer"},
                    },
                ],
                "duty": [{"action": "log"}],
            }
        ],
        "prohibition": [
            {
                "action": "use",
                "constraint": [
                    {"leftOperand": "purpose", "operator": "eq", "rightOperand": "marketing"}
                ],
            }
        ],
    }
    return data, entities, dataset, offer


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, dict[str, Any], dict[str, Any]]:
    return _provider_files(tmp_path_factory.mktemp("console-files"))


def test_provider_publishes_and_dry_runs(
    browser: Chrome,
    space: RunningSpace,
    files: tuple[Path, Path, dict[str, Any], dict[str, Any]],
    screenshots: Path,
) -> None:
    data, _, dataset, offer = files
    sign_in(browser, space, "tax-bureau", "provider")
    text_appears(browser, ".tree", "Tax collection and administration")

    # too open for its grades: the editor says so, and the node refuses it
    set_value(browser, find(browser, "textarea[name=dataset]"), json.dumps(dataset))
    text_appears(browser, ".floor", "looser than grade 3 allows")
    set_value(browser, find(browser, "textarea[name=offer]"), json.dumps(offer))
    set_value(browser, find(browser, "input[name=source-path]"), str(data))
    text_appears(browser, "button", "Publish").click()
    text_appears(browser, "p.error", "Refused")

    set_value(
        browser, find(browser, "textarea[name=dataset]"), json.dumps(dataset | {"tier": "zone"})
    )
    text_appears(browser, ".floor", "respects the grade floor")
    text_appears(browser, "button", "Publish").click()
    text_appears(browser, "p.ok", "Published tax-risk")
    text_appears(browser, ".tree", "tax-risk")

    # would a marketing request be allowed? No, and the trace says which rule; nothing is logged
    ledger_size = ledger_size_of(space, "tax-bureau")
    select = find(browser, "select[name=dry-dataset]")
    browser.execute_script(
        "arguments[0].value = 'tax-risk'; arguments[0].dispatchEvent(new Event('change'));", select
    )
    set_value(browser, find(browser, "input[name=dry-purpose]"), "marketing")
    text_appears(browser, "button", "Dry run").click()
    refused = text_appears(browser, ".dry-run-result .verdict.bad", "Would be refused")
    assert "prohibit" in refused.text.lower()
    text_appears(browser, ".dry-run-result table", "purpose")
    shoot(browser, screenshots, "provider")
    set_value(browser, find(browser, "input[name=dry-purpose]"), "pre-loan-review")
    text_appears(browser, "button", "Dry run").click()
    text_appears(browser, ".dry-run-result .verdict.ok", "Would be allowed")
    assert ledger_size_of(space, "tax-bureau") == ledger_size


def test_analyst_negotiates_scores_and_sees_a_refusal(
    browser: Chrome,
    space: RunningSpace,
    files: tuple[Path, Path, dict[str, Any], dict[str, Any]],
    downloads: Path,
    screenshots: Path,
) -> None:
    _, entities, _, _ = files
    sign_in(browser, space, "bank-a", "analyst")
    text_appears(browser, "[data-page=analyst] table", "tax-risk")
    find(browser, 'button[aria-label="Negotiate tax-risk with tax-bureau"]').click()
    text_appears(browser, "p.ok", "FINALIZED", timeout=60)
    text_appears(browser, "[data-page=analyst] table", "tax-bureau")

    # before asking: would a marketing score be allowed under this agreement?
    set_value(browser, find(browser, "input[name=ask-purpose]"), "marketing")
    text_appears(browser, "button", "Would it be allowed?").click()
    text_appears(browser, ".ask-result .verdict.bad", "Would be refused by tax-bureau")

    model = {"intercept": -0.5, "link": "logistic", "weights": {"tax-bureau": {"risk_index": 1.2}}}
    find(browser, "input[name=entities]").send_keys(str(entities))
    set_value(browser, find(browser, "input[name=label-column]"), "defaulted")
    set_value(browser, find(browser, "textarea[name=model-json]"), json.dumps(model))
    text_appears(browser, "button", "Run joint score").click()
    stages: set[str] = set()

    def finished(d: Chrome) -> bool:
        stage = d.find_element(By.CSS_SELECTOR, ".progress-box p").text
        stages.add(stage.split(":")[0])
        return stage.startswith(("done", "failed"))

    wait_for(browser, finished, timeout=120)
    assert "done" in stages, (stages, browser.find_element(By.CSS_SELECTOR, ".score-result").text)
    assert stages & {"queued", "running", "Submitting 60 entities…"}, stages
    assert find(browser, "progress").get_attribute("value") == "1"
    text_appears(browser, ".score-result p.ok", f"{ENTITIES} entities scored")
    text_appears(browser, ".score-result table", "default rate")

    text_appears(browser, "button", "Download results (CSV)").click()
    text_appears(browser, "button", "Download receipts (JSON)").click()
    wait_for(browser, lambda _: len(list(downloads.glob("*-receipts.json"))) == 1)
    wait_for(browser, lambda _: len(list(downloads.glob("*-scores.csv"))) == 1)
    scores = next(downloads.glob("*-scores.csv")).read_text(encoding="utf-8")
    rows = list(csv.DictReader(scores.splitlines()))
    assert len(rows) == ENTITIES and all(0 < float(r["output"]) < 1 for r in rows)
    receipts = json.loads(next(downloads.glob("*-receipts.json")).read_text(encoding="utf-8"))
    assert set(receipts) == {"tax-bureau"}
    browser.execute_script("window.scrollTo(0, 0)")
    shoot(browser, screenshots, "analyst")

    # the same for marketing: refused by the tax bureau, explained in plain words
    set_value(browser, find(browser, "input[name=purpose]"), "marketing")
    text_appears(browser, "button", "Run joint score").click()
    refusal = text_appears(browser, ".score-result .verdict.bad", "Refused by tax-bureau")
    assert "What to change" in refusal.text
    text_appears(browser, ".score-result table", "marketing")
    shoot(browser, screenshots, "analyst-refusal")

    # an aggregate over a cohort aligned by PSI, under a second agreement
    find(browser, 'button[aria-label="Negotiate tax-paid with tax-bureau"]').click()
    text_appears(browser, "p.ok", "for tax-paid: FINALIZED", timeout=60)
    agreement = find(browser, "select[name=agg-agreement]")
    browser.execute_script(
        "const s = arguments[0];"
        "s.value = [...s.options].find(o => o.text.includes('tax-paid')).value;",
        agreement,
    )
    set_value(browser, find(browser, "input[name=agg-column]"), "employees")
    statistic = find(browser, "select[name=agg-statistic]")
    browser.execute_script("arguments[0].value = 'count';", statistic)
    find(browser, "input[name=cohort]").send_keys(str(entities))
    text_appears(browser, "button", "Run aggregate").click()
    text_appears(browser, ".aggregate-result p.ok", f"count = {ENTITIES}", timeout=120)


def test_auditor_verifies_a_ledger_and_receipts(
    browser: Chrome, space: RunningSpace, downloads: Path, screenshots: Path
) -> None:
    # the tax bureau's staff have its ledger witnessed now (it also happens every 30 s)
    sign_in(browser, space, "tax-bureau", "node")
    text_appears(browser, "button", "Have the ledger witnessed now").click()
    text_appears(browser, "p.ok", "cosigned by the operator's witness")

    sign_in(browser, space, "court", "auditor")
    set_value(browser, find(browser, "input[name=verify-member]"), "tax-bureau")
    text_appears(browser, "button", "Verify ledger").click()
    verdict = text_appears(browser, ".verdict.ok", "Verified: tax-bureau's ledger")
    assert "extends every checkpoint the operator's witness cosigned" in verdict.text

    receipts = next(downloads.glob("*-receipts.json"))
    find(browser, "input[name=receipt]").send_keys(str(receipts))
    text_appears(browser, "button", "Check receipts").click()
    text_appears(browser, "form h3", "tax-bureau: verified")
    text_appears(browser, "form p.muted", "query.use")
    shoot(browser, screenshots, "auditor")

    # sign-out ends the session on the node: the API refuses the old cookie
    find(browser, "#sign-out").click()
    find(browser, "#sign-in-form")
    browser.get(f"{space['court'].url}/management/datasets")
    assert '"status":401' in browser.page_source.replace(" ", "")


def test_provider_sees_the_use_and_suspends_the_agreement(
    browser: Chrome, space: RunningSpace, screenshots: Path
) -> None:
    sign_in(browser, space, "tax-bureau", "provider")
    text_appears(browser, "[data-page=provider] table", "pre-loan-review")  # the use, by purpose
    text_appears(browser, "[data-page=provider] table", "prohibited")  # the refusal, with why
    find(browser, 'button[aria-label="Suspend agreement with bank-a"]').click()
    alert = browser.switch_to.alert
    alert.send_keys("review of the bank's model")
    alert.accept()
    text_appears(browser, "[data-page=provider] table", "suspended")
    shoot(browser, screenshots, "provider-usage")
