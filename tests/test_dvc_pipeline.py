"""`dvc repro` on the demo config, in a temporary copy of the repository (tests/dvc_project.py)."""

from __future__ import annotations

import json

import yaml
from dvc_project import DVC, run, stages_run


def test_repro_runs_every_stage_then_nothing_then_only_what_changed(dvc_project):
    root, env = dvc_project.root, dvc_project.env
    assert stages_run(dvc_project.first_repro) == {"prepare", "extract_train", "extract_test",
                                                   "extract_robust@jpeg50", "fit", "eval"}
    metrics = json.loads((root / "reports" / "demo" / "metrics.json").read_text())
    assert set(metrics["subsets"]) == {"DiT_cdf", "StyleGAN2_cdf", "sd2.1_cdf", "heygen",
                                       "whichisreal"}
    assert "test-jpeg50" in metrics["robustness"]
    assert (root / "reports" / "demo" / "report.html").is_file()
    assert (root / "runs" / "demo" / "model.safetensors").is_file()

    second = run([*DVC, "repro"], root, env)
    assert stages_run(second) == set()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["fit"]["lr"] = 0.001
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run([*DVC, "repro"], root, env)
    assert stages_run(third) == {"fit", "eval"}

    shown = run([*DVC, "metrics", "show", "--json"], root, env)
    assert "reports/demo/dvc_metrics.json" in shown
