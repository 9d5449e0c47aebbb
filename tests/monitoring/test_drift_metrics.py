"""imgpipe drift's result as Prometheus gauges: a textfile for node_exporter, a Pushgateway."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from imgpipe.errors import ImgpipeError
from imgpipe.monitoring.drift_metrics import drift_registry, export_drift
from tests.conftest import free_port
from tests.monitoring.exporters import SUMMARY, fake_pushgateway, samples


def test_the_gauges_carry_the_summary_and_the_time_of_the_run() -> None:
    exported = samples(generate_latest(drift_registry(SUMMARY, finished=1700000000.0)).decode())
    assert exported[("imgpipe_drift_detected", ())] == 1
    assert exported[("imgpipe_drift_share_drifted_columns", ())] == 0.666667
    assert exported[("imgpipe_drift_share_threshold", ())] == 0.5
    assert exported[("imgpipe_drift_embedding_score", ())] == 0.97
    assert exported[("imgpipe_drift_embedding_threshold", ())] == 0.55
    assert exported[("imgpipe_drift_group_detected", (("group", "embedding"),))] == 1
    assert exported[("imgpipe_drift_group_detected", (("group", "features"),))] == 1
    method = "chi-square p_value"
    assert exported[("imgpipe_drift_column_score", (("column", "predicted"), ("method", method)))]
    assert exported[("imgpipe_drift_column_detected", (("column", "brightness"),))] == 1
    assert exported[("imgpipe_drift_column_detected", (("column", "predicted"),))] == 0
    assert exported[("imgpipe_drift_rows", (("dataset", "current"),))] == 120
    assert exported[("imgpipe_drift_last_run_timestamp_seconds", ())] == 1700000000.0


def test_textfile_is_written_whole_for_the_textfile_collector(tmp_path: Path) -> None:
    textfile = tmp_path / "textfile" / "imgpipe_drift.prom"
    export_drift(SUMMARY, textfile=textfile)
    assert samples(textfile.read_text())[("imgpipe_drift_detected", ())] == 1
    assert [p.name for p in textfile.parent.iterdir()] == ["imgpipe_drift.prom"]  # no temp left
    with pytest.raises(ImgpipeError, match=r"only \*\.prom files"):
        export_drift(SUMMARY, textfile=tmp_path / "drift.txt")


def test_pushgateway_gets_the_gauges_under_job_imgpipe_drift() -> None:
    with fake_pushgateway() as (url, received):
        export_drift(SUMMARY, pushgateway=url)
    [(method, path, body)] = received
    assert (method, path) == ("PUT", "/metrics/job/imgpipe_drift")  # replaces the last run's
    assert samples(body)[("imgpipe_drift_embedding_score", ())] == 0.97


def test_an_unreachable_pushgateway_is_one_clean_error() -> None:
    with pytest.raises(ImgpipeError, match="--pushgateway"):
        export_drift(SUMMARY, pushgateway=f"http://127.0.0.1:{free_port()}")
