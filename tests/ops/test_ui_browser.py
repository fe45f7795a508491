"""The Dagster UI in a real browser: `dagster dev` as `make dev` starts it (instance storage in a temporary folder),
driven by headless Chromium (Debian's package, through Playwright's Python API; no browser download). From the
asset graph: dismiss the first-visit dialog, materialize `eval_sets`, see the run succeed, and read the row count the
UI shows against the Parquet file the run wrote. Screenshots go to tests/ops/artifacts/ (git-ignored)."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from assets.eval_sets.core import EVAL_SET_DESCRIPTIONS
from pipelines.metadata import PHASES
from tests.ops.servers import (
    REPO,
    Stopped,
    free_port,
    instance_dir,
    listening,
    log_tail,
    process_group,
    require_binary,
    wait_for_http,
)

pytestmark = pytest.mark.ui

CHROMIUM = Path("/usr/bin/chromium")
# As root Chromium needs --no-sandbox; the rest keep it off the network, which is closed here.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = REPO / "tests" / "ops" / "artifacts"
ASSET = "eval_sets"  # a table asset with no upstream: reads the bundled benchmark files (a few seconds)
UI_TIMEOUT_MS = 120_000  # the code location loads the whole project; the machine may be busy
RUN_TIMEOUT_MS = 300_000


class Browser:
    """A Playwright page with numbered screenshots; a failed step fails the test naming the screenshot."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.count = page, folder, 0

    def shot(self, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name.replace(' ', '-')}.png"
        self.page.screenshot(path=path, full_page=True)
        return path

    def step(self, name: str, action):
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - any failure: keep the evidence, say where it is
            path = self.shot(f"failed-{name}")
            raise AssertionError(f"UI step '{name}' failed at {self.page.url}: {error}\nscreenshot: {path}") from error


def parquet_rows(data_root: Path, asset: str) -> tuple[Path, int]:
    folder = data_root / asset / "data"
    path = folder / (folder / "CURRENT").read_text().strip()
    return path, pl.scan_parquet(path).select(pl.len()).collect().item()


def test_materialize_from_the_asset_graph_and_read_the_row_count(tmp_path):
    chromium = require_binary(CHROMIUM, "chromium")
    from playwright.sync_api import expect, sync_playwright

    shots = ARTIFACTS / "test_ui_browser"
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    home, data, log = instance_dir(tmp_path / "dagster_home"), tmp_path / "data", tmp_path / "dagster-dev.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DAGSTER_HOME": str(home), "SFT_DATA_ROOT": str(data), "PYTHONUNBUFFERED": "1"}
    dagster = Path(sys.executable).parent / "dagster"
    timings: dict[str, float] = {}
    stopped: list[Stopped] = []
    print(f"\nscreenshots: {shots}\ndagster dev log: {log}")

    start = time.monotonic()
    with process_group([str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=REPO, log=log,
                       stopped=stopped) as server:
        timings["webserver answers"] = wait_for_http(f"{base}/server_info", server, log, timeout=240)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, timeout=60_000)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)
            ui = Browser(page, shots)
            try:
                # The asset graph; on a new instance Dagster shows a "Join the Dagster community" dialog once.
                page.goto(f"{base}/asset-groups", wait_until="domcontentloaded")
                ui.step("open the asset graph", lambda: expect(page.get_by_text("Global asset lineage")).to_be_visible(
                    timeout=UI_TIMEOUT_MS))
                dialog = page.get_by_text("Join the Dagster community")
                try:
                    dialog.wait_for(timeout=20_000)
                    ui.shot("first-visit-dialog")
                    page.get_by_role("button", name="Skip").click()
                    expect(dialog).to_be_hidden()
                    dismissed = True
                except Exception:  # noqa: BLE001 - no dialog (seen before on this instance): nothing to dismiss
                    dismissed = False
                # Should it come back later, dismiss it before any other action.
                page.add_locator_handler(dialog, lambda: page.get_by_role("button", name="Skip").click())
                # The global lineage shows the pipeline's phases (the asset groups), not one box per stage.
                for phase in PHASES:
                    ui.step(f"see the {phase} group", lambda phase=phase: expect(
                        page.locator("foreignObject").get_by_text(phase, exact=True).first).to_be_visible())
                ui.shot("asset-graph")

                # Filter the graph to the asset, select its node, materialize it.
                def select_asset():
                    page.locator(".CodeMirror").first.click()
                    page.keyboard.type(f"key:{ASSET}")
                    page.keyboard.press("Enter")
                    page.locator("foreignObject").get_by_text(ASSET, exact=True).filter(visible=True).first.click()
                    expect(page.get_by_role("button", name="Materialize selected")).to_be_enabled()

                ui.step("select the asset in the graph", select_asset)
                ui.shot("asset-selected")
                launched = time.monotonic()
                ui.step("launch the materialization",
                        lambda: page.get_by_role("button", name="Materialize selected").click())
                ui.shot("launched")

                # The side panel shows the latest materialization once the run has written it.
                row_count_row = page.get_by_role("row").filter(has=page.get_by_text("dagster/row_count", exact=True))
                ui.step("wait for the materialization", lambda: expect(row_count_row).to_be_visible(
                    timeout=RUN_TIMEOUT_MS))
                timings["launch to materialized"] = time.monotonic() - launched
                ui.shot("materialized")
                panel_rows = int(re.sub(r"\D", "", row_count_row.inner_text().split("dagster/row_count", 1)[1]))

                # The run: open it from the panel and see it succeed.
                run_link = page.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).first
                run_id = ui.step("find the run", lambda: run_link.inner_text())
                run_link.click()
                ui.step("see the run succeed", lambda: expect(page.get_by_text("Success", exact=True).first)
                        .to_be_visible(timeout=RUN_TIMEOUT_MS))
                ui.step("see the run's success event", lambda: expect(page.get_by_text("RUN_SUCCESS").first)
                        .to_be_visible())
                ui.shot("run-succeeded")

                # The asset's page in the catalog: its status block shows the row count.
                page.goto(f"{base}/assets/{ASSET}", wait_until="domcontentloaded")
                row_count = page.get_by_text("Row count", exact=True).first
                ui.step("read the row count", lambda: expect(row_count.locator("xpath=..")).to_contain_text(
                    re.compile(r"Row count\s*[\d,]+")))
                ui.shot("asset-page")
                # Its columns, each with the description declared with its schema (assets/eval_sets/core.py).
                description = page.get_by_text(EVAL_SET_DESCRIPTIONS["text"], exact=True).first
                ui.step("read a column's description", lambda: expect(description).to_be_visible())
                description.scroll_into_view_if_needed()
                ui.shot("asset-columns")
                shown = row_count.locator("xpath=..").inner_text()
                ui_rows = int(re.search(r"Row count\s*([\d,]+)", shown).group(1).replace(",", ""))
            finally:
                browser.close()
    timings["total"] = time.monotonic() - start
    stop = stopped[0]

    path, file_rows = parquet_rows(data, ASSET)
    print(f"run {run_id}: UI row count {ui_rows:,}, side panel {panel_rows:,}, {path}: {file_rows:,} rows; "
          f"first-visit dialog dismissed: {dismissed}; " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
          + f"; stopped with {stop.signal_sent} in {stop.seconds:.1f} s")
    assert ui_rows == panel_rows == file_rows, (ui_rows, panel_rows, file_rows, path)
    assert not stop.left, f"processes of dagster dev still alive after SIGKILL: {stop.left}"
    assert not listening(port), f"port {port} still accepts connections after dagster dev stopped"
    assert not stop.killed, (f"dagster dev did not stop on SIGINT within the grace period; SIGKILLed {stop.killed}; "
                             f"log {log}:\n{log_tail(log)}")
