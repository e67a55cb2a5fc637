"""The pages in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
upload -> result, compare, an error banner. Screenshots go to test-artifacts/screenshots/."""
import shutil
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from components.data import records, schema
from gateway.app import create_app
from serving import repository
from serving.server import Server
from tests.conftest import ARTIFACTS, ULTRASOUND_UNFROZEN, gateway_config

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                reason="Debian chromium and chromium-driver are not installed (.ci/run installs them)")


@pytest.fixture(scope="module")
def site(pipeline_outputs, sample_splits, tmp_path_factory, issuer):
    root = tmp_path_factory.mktemp("browser-repo")
    for name in ULTRASOUND_UNFROZEN:          # the pages the test visits: a model, its cohort
        repository.push(pipeline_outputs[name] / "saved_model", root)
    server = Server(root, port=0)
    app = create_app(gateway_config(issuer, root, f"127.0.0.1:{server.port}"))
    http = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    files = tmp_path_factory.mktemp("uploads")
    raw = sample_splits["ultrasound"].parent / "splits" / "test"
    (files / "scan.png").write_bytes(schema.deserialize(next(records.read_records(raw))).image_png)
    (files / "notes.png").write_text("these are notes, not an image")
    yield {"url": f"http://127.0.0.1:{http.server_port}", "files": files, "issuer": issuer}
    http.shutdown()
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _after_submit(driver, css: str, timeout: float = 60.0) -> list:
    """The elements the answer page shows: a submit click returns before the new page has
    arrived, and on a busy 2-core machine three models can take seconds to answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))


def _shot(driver, name):
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))
    assert (folder / f"{name}.png").stat().st_size > 5000


def _as(browser, token: str) -> None:
    """Every request the browser sends carries ``token``, as the login proxy in front of the
    gateway forwards a signed-in user's (oauth2-proxy's --pass-authorization-header)."""
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {token}"}})


def test_upload_result_compare_and_error_banner_in_chromium(site, browser):
    from selenium.webdriver.common.by import By

    from selenium.webdriver.support.ui import WebDriverWait

    issuer = site["issuer"]
    browser.get(site["url"] + "/")                  # no token: the gateway says who may come in
    WebDriverWait(browser, 30).until(lambda d: "bearer token" in d.page_source)
    _as(browser, issuer.token("dr-reader", ("auditor",)))
    browser.get(site["url"] + "/cohorts/ultrasound/unfrozen")
    WebDriverWait(browser, 30).until(lambda d: "needs the clinician role" in d.page_source)
    _shot(browser, "forbidden")

    _as(browser, issuer.token("dr-example", ("clinician",)))
    browser.get(site["url"] + "/")
    # Under load Chromium can report an empty document for a moment after get() returns
    WebDriverWait(browser, 30).until(lambda d: "Breast-cancer image classification" in d.page_source)
    _shot(browser, "home")
    browser.find_element(By.LINK_TEXT, "Ultrasound").click()
    browser.find_element(By.LINK_TEXT, "resnet50").click()
    browser.find_element(By.ID, "image-input").send_keys(str(site["files"] / "scan.png"))
    browser.find_element(By.ID, "predict-button").click()
    label = _after_submit(browser, "#result-label")[0].text
    assert label in ("Benign or normal", "Malignant")
    assert browser.find_element(By.ID, "gradcam").get_attribute("src").startswith("data:image/png;base64,")
    _shot(browser, "model-result")

    browser.get(site["url"] + "/cohorts/ultrasound/unfrozen")
    browser.find_element(By.ID, "image-input").send_keys(str(site["files"] / "scan.png"))
    browser.find_element(By.ID, "compare-button").click()
    rows = _after_submit(browser, "#result tr.cell-0, #result tr.cell-1")
    # three model rows and the cohort ensemble's row (the ensemble of the three answers)
    assert len(rows) == 4 and "models agree" in browser.find_element(By.ID, "result").text
    assert "Cohort ensemble" in browser.find_element(By.ID, "ensemble").text
    _shot(browser, "compare")

    browser.get(site["url"] + "/models/ultrasound-vgg16-unfrozen")
    browser.find_element(By.ID, "image-input").send_keys(str(site["files"] / "notes.png"))
    browser.find_element(By.ID, "predict-button").click()
    banner = _after_submit(browser, "#error-banner")[0].text
    assert "not an image" in banner and "PNG, JPEG or BMP" in banner
    _shot(browser, "error-banner")
