"""Cancelling a real background QgsTask at each stage of a job: the task ends cancelled with the
sentence, and nothing is written (no output, no temporary file).

The cancel comes from the task's own stage signal, connected directly (it runs in the worker
thread as the stage begins), so each run stops at the stage named and not at a random moment.
"""

from __future__ import annotations

import pytest
from conftest import raster_layer, wait_for

from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.errors import CancelledError
from rs_vlm_plugin.core.jobs.config import JobConfig

STAGES = ["Loading the model", "Reading an overview", "Encoding", "Writing captions", "Writing the GeoPackage"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_task_cancelled_at_a_stage_writes_nothing(qgis_app, rasters, bundle_dir, tmp_path, stage):
    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import Qt

    from rs_vlm_plugin.qgis_shell.source import QgsLayerSource
    from rs_vlm_plugin.qgis_shell.task import JobRequest, RsVlmTask

    layer = raster_layer(rasters["scene"])
    out = tmp_path / "out.gpkg"
    request = JobRequest("describe", QgsLayerSource(layer), config=JobConfig(plan=PlanConfig(max_tiles=8)),
                         model_dir=bundle_dir, output=out)
    task = RsVlmTask(request)
    stages, failed, finished = [], [], []

    def on_stage(text: str) -> None:
        stages.append(text)
        if text.startswith(stage):
            task.cancel()

    task.stageChanged.connect(on_stage, Qt.DirectConnection)
    task.jobFailed.connect(failed.append)
    task.jobFinished.connect(finished.append)
    QgsApplication.taskManager().addTask(task)
    wait_for(lambda: failed or finished, timeout_s=300)

    assert not finished, f"the job ran to the end: {stages}"
    assert failed == [CancelledError().args[0]]
    assert task.cancelled
    assert any(s.startswith(stage) for s in stages)
    later = STAGES[STAGES.index(stage) + 1:]
    assert not any(s.startswith(tuple(later)) for s in stages), stages
    assert list(tmp_path.iterdir()) == []  # no output, no temporary GeoPackage or journal
