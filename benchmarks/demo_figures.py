"""The demo's figures in the README, from the code as shipped: per-subset test AUC of the demo
detector for seeds 0, 1 and 2, and how far its scores spread.

After `make demo`, from the repository root:

    python -m benchmarks.demo_figures            # refit seeds 0-2 on stores/demo, print the table
    python -m benchmarks.demo_figures --write    # ... and replace the table in README.md

Each seed runs `clare fit` and `clare eval` as dvc.yaml does (configs/demo.yaml, the fit keys of
params.yaml, `--set seed=N`) into a temporary folder, so runs/ and reports/ stay as they are.
Seed 0 is exactly what `make demo` prints. tests/test_dvc_experiments.py refits the same seeds
on its own copy of the demo and checks the README's table against them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
START, END = "<!-- demo-figures:start -->", "<!-- demo-figures:end -->"

Runner = Callable[[list[str]], Any]


def fit_and_eval(run: Runner, out: Path, seed: int, repo: Path = REPO) -> tuple[dict[str, Any], pd.DataFrame]:
    """Fit and evaluate the demo detector with `seed` through `run(argv)` (the CLI, run from a
    folder that holds the demo's stores/, data/ and models/); metrics.json and scores.parquet."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    config, fit = str(repo / "configs" / "demo.yaml"), params["fit"]
    common = ["--set", f"seed={seed}", "--set", f"paths.stores={params['stores']}",
              "--set", f"paths.runs={out / 'runs'}", "--set", f"paths.reports={out / 'reports'}"]
    run(["clare", "fit", "--config", config, "--name", f"seed{seed}", "--quiet",
         "--module", fit["module"], "--strategy", fit["strategy"], "--attention", fit["attention"],
         *[arg for key in ("lr", "batch_size") for arg in ("--set", f"fit.{key}={fit[key]}")],
         *common])
    run(["clare", "eval", "--config", config, "--run", str(out / "runs" / f"seed{seed}"),
         "--quiet", *common])
    report = out / "reports" / f"seed{seed}"
    return json.loads((report / "metrics.json").read_text()), pd.read_parquet(report / "scores.parquet")


def score_spread(scores: pd.DataFrame) -> float:
    """5th to 95th percentile of p(fake) over the clean test store."""
    p_fake = scores.loc[scores["store"] == "test", "p_fake"].dropna().to_numpy()
    return float(np.percentile(p_fake, 95) - np.percentile(p_fake, 5))


def table(results: Sequence[tuple[int, dict[str, Any], pd.DataFrame]]) -> str:
    """The README's Markdown table: one row per seed."""
    subsets = list(results[0][1]["subsets"])
    lines = ["| seed | " + " | ".join(subsets) + " | mean | p(fake) 5–95 % |",
             "| ---: | " + " | ".join("---:" for _ in subsets) + " | ---: | ---: |"]
    for seed, metrics, scores in results:
        cells = [f"{metrics['subsets'][s]['auc']:.3f}" for s in subsets]
        lines.append(f"| {seed} | " + " | ".join(cells)
                     + f" | {metrics['mean']['auc']:.3f} | {score_spread(scores):.2f} |")
    return "\n".join(lines)


def readme_table(readme: str) -> str:
    """The table between the README's demo-figures markers."""
    if START not in readme or END not in readme:
        raise ValueError(f"README.md lacks the {START} ... {END} markers")
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def _cli(argv: list[str]) -> None:
    # the clare of this interpreter's environment, as `make demo` puts .venv/bin first on PATH
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv[:2])} failed:\n{(done.stdout + done.stderr)[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args(argv)
    if not (REPO / "stores" / "demo" / "test").is_dir():
        sys.exit("run `make demo` first (no stores/demo/test)")
    with tempfile.TemporaryDirectory() as tmp:
        results = [(seed, *fit_and_eval(_cli, Path(tmp) / f"s{seed}", seed)) for seed in SEEDS]
    fresh = table(results)
    print(fresh)
    readme_path = REPO / "README.md"
    readme = readme_path.read_text()
    if args.write:
        old = readme_table(readme)
        readme_path.write_text(readme.replace(old, fresh, 1))
        print(f"wrote {readme_path}")
        return 0
    if readme_table(readme) != fresh:
        print("README.md's demo table differs from what the code gives now; rerun with --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
