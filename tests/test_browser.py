"""Real-browser test: a student's path through a release notebook, in JupyterLab and headless Chromium.

JupyterLab serves a temporary copy of release/ on a free local port; Chromium (Debian's
package, driven by Playwright, no browser download) opens 02_torchrun, runs the set-up cell
and the self-check cell, clicks two check buttons and reads the verdicts the widgets render:
the learner's torchrun_basics.py has a correct dist_env() and a blank global_mean(), so
"Check torchrun.env" must show PASS (a real torchrun launch) and "Check torchrun.mean" the
NotImplementedError verdict. A screenshot and the server log go to test-artifacts/.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from autograder.launch import carries, free_port, processes_with_env, signal_if
from conftest import solution

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO / "release"
ASSIGNMENT = "02_torchrun"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_TAG = "COURSE_BROWSER_TEST"   # carried by JupyterLab and its kernels, to sweep them at the end

# Jupyter files for the test (under its temp folder): every cell in the DOM (no virtual scrolling),
# no news or update pop-up, no "build is up to date" check and no language-server scan (they only cost time).
JUPYTER_FILES = {
    "lab-settings/@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
    "lab-settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        '{"checkForUpdates": false, "fetchNews": "false"}',
    "config/labconfig/page_config.json": '{"buildCheck": false, "buildAvailable": false}',
    "config/jupyter_server_config.json": '{"ServerApp": {"jpserver_extensions": {"jupyter_lsp": false}}}',
}


def learner_module() -> str:
    """The reference torchrun_basics.py with global_mean() put back to the released stub."""
    text = solution("02_torchrun", "torchrun_basics.py").read_text()
    start, end = text.index("def global_mean("), text.index("def gather_all(")
    stub = "def global_mean(t):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\n\n"
    return text[:start] + stub + text[end:]


def jupyter_env(home: Path, tag: str) -> dict[str, str]:
    """Every directory Jupyter, IPython and matplotlib write to, inside the test's temp folder."""
    dirs = {"JUPYTER_RUNTIME_DIR": "runtime", "JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
            "JUPYTERLAB_SETTINGS_DIR": "lab-settings", "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
            "IPYTHONDIR": "ipython", "MPLCONFIGDIR": "mpl"}
    env = {**os.environ, SERVER_TAG: tag, "PYTHONUNBUFFERED": "1"}
    for name, sub in dirs.items():
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(home / sub)
    for rel, text in JUPYTER_FILES.items():
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return env


class JupyterLab:
    """A headless JupyterLab on 127.0.0.1, stopped (with its kernels) on exit."""

    def __init__(self, notebook_dir: Path, home: Path):
        self.port, self.token, self.tag = free_port(), secrets.token_hex(16), uuid.uuid4().hex
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "jupyterlab.log"
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1",
               "--port", str(self.port), "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               "--notebook-dir", str(notebook_dir)]
        if os.geteuid() == 0:
            cmd.append("--allow-root")   # Jupyter refuses root without it (CI runs as root)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=home, env=jupyter_env(home, self.tag), stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def api(self, path: str, method: str = "GET", body: dict | None = None, timeout: float = 5) -> int:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.base + path, method=method, data=data,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status

    def start_kernel_for(self, notebook: str) -> None:
        """Start the notebook's kernel session now, so it boots while the browser loads JupyterLab
        (the page attaches to this session, as it does to a student's running kernel)."""
        name = Path(notebook).name
        body = {"path": notebook, "name": name, "type": "notebook", "kernel": {"name": "python3"}}
        assert self.api("/api/sessions", "POST", body, timeout=30) == 201

    def wait_ready(self, timeout: float = 45) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.api("/api/status") == 200:
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        """Shut the server down through its API (it stops its kernels), then make sure of it."""
        try:
            self.api("/api/shutdown", "POST")
            self.proc.wait(timeout=15)
        except Exception:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in processes_with_env(SERVER_TAG, self.tag):   # kernels live in sessions of their own
            signal_if(pid, signal.SIGKILL, lambda: carries(pid, SERVER_TAG, self.tag))
        self.log.close()


def require_chromium() -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium is not installed ({CHROMIUM} missing): on Debian `apt-get install chromium` "
                    "(`make test` does it when run as root)")


@pytest.fixture
def lab(tmp_path):
    """JupyterLab starting on a temp copy of release/ (the test waits for it once Chromium is up too)."""
    require_chromium()
    notebook = RELEASE / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    assert notebook.is_file(), f"{notebook} is missing: run `course release`"
    root = tmp_path / "release"
    shutil.copytree(RELEASE, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    (root / ASSIGNMENT / "torchrun_basics.py").write_text(learner_module())
    server = JupyterLab(root, tmp_path)
    try:
        yield server
    finally:
        server.stop()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(server.log_path, ARTIFACTS / f"browser_{ASSIGNMENT}_jupyterlab.log")


@pytest.fixture
def browser_page(tmp_path):
    require_chromium()
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as p:
        try:
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900}, timeout=30_000)
        except Error as exc:
            pytest.skip(f"Chromium at {CHROMIUM} cannot be launched here: {str(exc).splitlines()[0]}")
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def run_cell(page, text: str):
    """Click into the code cell whose source contains text and run it with Shift+Enter; return the cell."""
    from playwright.sync_api import expect

    cell = page.locator(".jp-Notebook .jp-CodeCell").filter(has_text=text)
    expect(cell, f"one code cell containing {text!r}").to_have_count(1, timeout=30_000)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    return cell


def test_self_check_buttons_show_verdicts_in_chromium(lab, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"browser_{ASSIGNMENT}.png"
    lab.wait_ready()
    lab.start_kernel_for(f"{ASSIGNMENT}/{ASSIGNMENT}.ipynb")
    try:
        page.goto(f"{lab.base}/lab/tree/{ASSIGNMENT}/{ASSIGNMENT}.ipynb?token={lab.token}")
        # the status bar names the kernel once it is connected ("Python 3 (ipykernel) | Idle")
        kernel_idle = page.locator("#jp-main-statusbar").get_by_text(re.compile(r"^(?!No Kernel).+ \| Idle$"))
        expect(kernel_idle).to_be_visible(timeout=60_000)

        setup_cell = run_cell(page, "NPROC = setup()")
        expect(setup_cell.locator(".jp-OutputArea-output")).to_contain_text("Profile:", timeout=45_000)

        check_cell = run_cell(page, 'self_check("02_torchrun")')
        env_button = check_cell.get_by_role("button", name="Check torchrun.env")
        expect(env_button).to_be_visible(timeout=30_000)
        expect(check_cell.get_by_role("button", name=re.compile(r"^Check "))).to_have_count(3)  # one button each

        env_button.click()   # a real 2-rank torchrun launch of the learner's dist_env()
        env_verdict = check_cell.locator(".course-verdict").filter(has_text="torchrun.env")
        expect(env_verdict).to_contain_text("PASS torchrun.env", timeout=75_000)
        expect(env_verdict).to_have_attribute("data-status", "pass")

        check_cell.get_by_role("button", name="Check torchrun.mean").click()
        mean_verdict = check_cell.locator(".course-verdict").filter(has_text="torchrun.mean")
        expect(mean_verdict).to_contain_text("FAIL torchrun.mean", timeout=30_000)
        expect(mean_verdict).to_contain_text(re.compile(r"global_mean\(\).*NotImplementedError"))
        expect(mean_verdict).to_contain_text("YOUR CODE HERE")      # the hint says what to fill in
        expect(mean_verdict).to_have_attribute("data-status", "not-implemented")
        check_cell.scroll_into_view_if_needed()
    finally:
        page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000, "the screenshot is (nearly) empty"
