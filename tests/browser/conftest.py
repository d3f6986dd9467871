"""Fixtures of the dashboard tests: the bundled results made once per run, servers started and stopped here."""

import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("DIFFSQL_BIN", str(REPO / "target/debug/diffsql"))
CHROMIUM = os.environ.get("DIFFSQL_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = pathlib.Path(os.environ.get("DIFFSQL_SCREENSHOTS", str(REPO / "target/screenshots")))
METHODS = "kl,normdiff,adl,diff_mining"


def diffsql(*args, data=None, check=True):
    """Runs the diffsql binary in the repository (its configs and queries), over `data`'s cache and results."""
    extra = []
    if data is not None:
        extra = ["--cache", str(data / "cache")]
    return subprocess.run(
        [BIN, *extra, *args], cwd=REPO, check=check, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="session")
def data():
    """A folder with `cache/` and `results/` of the bundled pair (DIFFSQL_BROWSER_DATA reuses one)."""
    given = os.environ.get("DIFFSQL_BROWSER_DATA")
    if given:
        path = pathlib.Path(given)
        if (path / "results").is_dir():
            yield path
            return
    else:
        path = pathlib.Path(tempfile.mkdtemp(prefix="diffsql-browser-"))
    path.mkdir(parents=True, exist_ok=True)
    diffsql(
        "run", "--multirun", "organism=caps,roman_concrete", f"diffing/method={METHODS}",
        f"results_dir={path / 'results'}", data=path,
    )
    yield path
    if not given:
        shutil.rmtree(path, ignore_errors=True)


class Server:
    """`diffsql serve --port 0` as a child process; `url` is where it listens."""

    def __init__(self, data, results=None, extra=()):
        results = results or data / "results"
        # stderr to a file: a pipe nobody reads would stall the server once full.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [BIN, "--cache", str(data / "cache"), "serve", "--port", "0", *extra, f"results_dir={results}"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        line = self.process.stdout.readline()
        match = re.search(r"listening on (http://\S+/)", line)
        if not match:
            self.stop()
            self.log.seek(0)
            raise RuntimeError(f"diffsql serve did not start: {line!r} {self.log.read()}")
        self.url = match.group(1)

    def alive(self):
        return self.process.poll() is None

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="session")
def server(data):
    s = Server(data)
    yield s
    assert s.alive(), "the server died during the tests"
    s.stop()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page that records console errors and uncaught exceptions in `page.problems`."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    p = context.new_page()
    p.problems = []
    p.on("console", lambda m: p.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    p.on("pageerror", lambda e: p.problems.append(f"page error: {e}"))
    yield p
    context.close()


def screenshot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)
