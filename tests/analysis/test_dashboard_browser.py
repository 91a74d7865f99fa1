"""optuna-dashboard on a kdzero study, rendered in headless Chromium: the Pareto front and objective names."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from study._optuna import study_id
from tests.analysis.conftest import fill_study
from tests.analysis.helpers import new_study

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
INSTALL = "apt-get install -y chromium chromium-driver; pip install selenium"


def _need(tool: str | None, what: str) -> None:
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing; CI must install it ({INSTALL})")
        pytest.skip(f"{what} is not installed ({INSTALL})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, attempts: int = 300) -> None:
    """Poll until the server answers (a bounded number of tries, not a wall-clock bound on the test)."""
    for _ in range(attempts):
        if proc.poll() is not None:
            raise AssertionError(f"optuna-dashboard exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"optuna-dashboard did not answer at {url}")


def test_dashboard_shows_pareto_front(tmp_path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        _need(None, "selenium")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_bin = shutil.which("chromedriver")
    _need(chrome, "chromium")
    _need(driver_bin, "chromedriver")
    dashboard = shutil.which("optuna-dashboard")
    _need(dashboard, "optuna-dashboard")

    url = f"sqlite:///{tmp_path / 'kd.db'}"
    study = new_study(url, name="kd-browser", config={"experiment": {}})
    fill_study(study, 12)
    port = _free_port()
    server = subprocess.Popen(
        [dashboard, url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    driver = None
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/api/studies", server)
        # rejected trials carry their reason as user attrs, which the dashboard's trial pages list
        with urllib.request.urlopen(f"{base}/api/studies/{study_id(study)}", timeout=30) as resp:
            trials = json.load(resp)["trials"]
        pruned = [t for t in trials if t["state"] == "Pruned"]
        assert pruned and all(any(a["key"] == "reject_reason" for a in t["user_attrs"]) for t in pruned)
        options = webdriver.ChromeOptions()
        options.binary_location = chrome
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(driver_bin), options=options)
        driver.get(f"{base}/dashboard/studies/{study_id(study)}")
        wait = WebDriverWait(driver, 60)
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Pareto Front"))
        # the Pareto-front plot is drawn (plotly draws points as SVG paths inside .scatterlayer)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .point"))
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "kd-browser" in body
        assert "val_ce" in body and "sharpness_gap" in body  # objective names from set_metric_names
        out = Path(os.environ.get("KDZERO_ARTIFACTS", ROOT / "artifacts"))
        out.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(out / "dashboard.png"))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
