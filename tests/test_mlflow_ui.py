"""The MLflow UI in a real headless Chromium against a real `mlflow server`: the page a user
opens from `aar ui` shows PGR, and the campaign report renders with its plot.

Screenshots are saved under the test's temporary folder and their paths printed (`pytest -s`)."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from aar_ray.campaign.report import markdown_page
from aar_ray.tracking import Tracker, results_links
from ports import free_port, wait_until_healthy

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")]

PARAMS = {"testbed": "taxonomy", "seed": 1, "eval_split": "validation"}



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (each start takes 12-15 s on 2 cores); each test writes its own
    experiment, so no test sees another's runs."""
    tmp_path = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_healthy(f"{url}/health", proc, 120, probe_timeout=1):
            pytest.fail("mlflow server did not start")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _chromium(tmp_path, url, *, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran, as text; a screenshot too when asked."""
    profile = tmp_path / f"chromium-{time.monotonic_ns()}"
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--window-size=1600,1000"]
    if screenshot is not None:
        subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
        print(f"screenshot of {url}: {screenshot}")
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True).stdout
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def _campaign(tracker: Tracker) -> str:
    """A campaign's records as the campaign writes them: its run (named as its experiment), a run
    per researcher, the researchers' experiments, then the summaries."""
    campaign = tracker.start_parent(tracker.experiment, {"testbed": "taxonomy"})
    for researcher, pgrs in (("reweighting-1", [0.82, 0.41]), ("representations-0", [0.33])):
        run = tracker.researcher_run(campaign, researcher)
        for i, pgr in enumerate(pgrs):
            tracker.log_experiment("x", {**PARAMS, "method": f"aux_confidence:alpha={i}"}, {"pgr": pgr},
                                   {"aar_kind": "experiment", "submitter": researcher, "split": "validation"},
                                   predictions=pd.DataFrame({"id": [0], "p": [0.9]}), parent_run_id=run)
        tracker.finish_parent(run)
    tracker.finish_parent(campaign, summary={"best_validation_pgr": 0.82, "mean_validation_pgr": 0.52,
                                             "winner_holdout_pgr": 0.79, "experiments": 3, "dollars": 0.0})
    return campaign


def test_the_page_aar_ui_links_to_shows_pgr_first(server, tmp_path):
    tracker = Tracker(server, "campaign-ui", spool_dir=tmp_path / "spool")
    _campaign(tracker)
    link = results_links(server, server)["campaign-ui"]
    page = _chromium(tmp_path, link, screenshot=tmp_path / "runs-with-pgr.png")
    assert "Overview" not in page.split("campaign-ui")[-1][:200]  # the runs table, not the GenAI overview
    header = page[page.index("Run Name"):]
    assert re.match(r"Run Name Created .*best_validation_pgr mean_validation_pgr pgr winner_holdout_pgr", header)
    # the campaign's and the researchers' summaries, then the experiments' own PGR
    assert "PGR 0.82 · campaign-ui" in page and "0.82 0.52 - 0.79" in page
    assert "PGR 0.82 · researcher reweighting-1" in page
    assert "reweighting-1/aux_confidence:alpha=0/taxonomy/validation/seed1" in page
    assert (tmp_path / "runs-with-pgr.png").stat().st_size > 10_000


def test_the_plain_experiment_link_names_the_best_pgr(server, tmp_path):
    """Opened without the view (from the experiment list, in the UI's model-training mode), the
    runs table has no metric columns; the campaign run's name still says its best PGR."""
    tracker = Tracker(server, "campaign-plain", spool_dir=tmp_path / "spool")
    _campaign(tracker)
    page = _chromium(tmp_path, f"{server}/#/experiments/{tracker.experiment_id}?workflowType=machine_learning",
                     screenshot=tmp_path / "runs-plain.png")
    assert "PGR 0.82 · campaign-plain" in page


def test_the_report_renders_with_its_plot_in_the_artifact_viewer(server, tmp_path):
    tracker = Tracker(server, "campaign-report", spool_dir=tmp_path / "spool")
    run = tracker.start_parent("campaign-report", {})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2], [0.2, 0.5, 0.82])
    fig.savefig(tmp_path / "pgr_over_time.png")
    (tmp_path / "report.html").write_text(markdown_page(
        ["# Campaign `ui`", "", "![PGR over time](pgr_over_time.png)", "", "| idea | pgr |", "|---|---|",
         "| aux_confidence | 0.82 |"], tmp_path, "Campaign ui"))
    tracker.finish_parent(run, [tmp_path / "report.html"], summary={"best_validation_pgr": 0.82})
    viewer = f"{server}/#/experiments/{tracker.experiment_id}/runs/{run}/artifacts/report.html"
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'chromium-viewer'}", "--virtual-time-budget=30000",
                          "--dump-dom", viewer], capture_output=True, text=True, timeout=180, check=True).stdout
    # MLflow's viewer shows an HTML artifact as a page (an iframe), Markdown as plain text
    assert 'class="mlflow-html-iframe"' in dom
    _chromium(tmp_path, viewer, screenshot=tmp_path / "report-in-viewer.png")
    # ... and the page needs nothing beside it: its plot is inside it
    served = requests.get(f"{server}/get-artifact", params={"path": "report.html", "run_uuid": run}, timeout=30).text
    assert "data:image/png;base64," in served and not re.search(r'<img [^>]*src="(?!data:)', served)
