"""The `clare` command line. It only parses arguments and calls a stage.

Heavy imports (torch, diffusers, open_clip) happen inside the commands so that `clare --help`
answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from clare.errors import ClareError

app = typer.Typer(
    name="clare",
    help="CLaRE: detect generated faces with CLIP + latent reconstruction error + learnable prompts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Build or inspect model weights.", no_args_is_help=True)
app.add_typer(models_app, name="models")

_state = {"debug": False}

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="YAML config file (see configs/).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: dotted.key=value (repeatable)."),
]


def _load(config: Path, overrides: list[str] | None):
    from clare.config import load_config

    return load_config(config, overrides or [])


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def prepare(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Index the dataset: read DF40 JSON lists or folders, sample frames, check files."""
    from clare.stages.prepare import run_prepare

    run_prepare(_load(config, set_))


@app.command()
def extract(
    config: ConfigOpt,
    split: Annotated[str, typer.Option(help="train or test")] = "train",
    subset: Annotated[list[str] | None, typer.Option(help="Only these subsets.")] = None,
    views: Annotated[int | None, typer.Option(help="Views per image (view 0 clean).")] = None,
    perturb: Annotated[str | None, typer.Option(help="jpeg=Q or blur=SIGMA")] = None,
    workers: Annotated[int | None, typer.Option(help="Dask LocalCluster workers.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Address of a running Dask scheduler.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N")] = None,
    max_failures: Annotated[float | None, typer.Option(help="Exit non-zero above this failed fraction.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Delete an existing store and start afresh.")] = False,
    set_: SetOpt = None,
) -> None:
    """Run the frozen VAE, UNet and CLIP once per image; write LaRE maps and CLIP tokens."""
    from clare.stages.extract import run_extract

    run_extract(
        _load(config, set_),
        split=split,
        subsets=subset or None,
        views=views,
        perturb=perturb,
        workers=workers,
        scheduler=scheduler,
        device=device,
        max_failures=max_failures,
        overwrite=overwrite,
    )


@app.command()
def fit(
    config: ConfigOpt,
    module: Annotated[str | None, typer.Option(help="fusion, lare or clipping")] = None,
    strategy: Annotated[str | None, typer.Option(help="coop or cocoop")] = None,
    attention: Annotated[str | None, typer.Option(help="v1 or v2 (fusion)")] = None,
    name: Annotated[str | None, typer.Option(help="Run name (runs/<name>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from runs/<name>/last.ckpt.")] = False,
    set_: SetOpt = None,
) -> None:
    """Train the prompts and the error-guided head from the train store."""
    from clare.stages.fit import run_fit

    extra = [f"fit.{k}={v}" for k, v in
             (("module", module), ("strategy", strategy), ("attention", attention), ("name", name))
             if v is not None]
    run_fit(_load(config, [*(set_ or []), *extra]), resume=resume)


@app.command("eval")
def evaluate(
    config: ConfigOpt,
    run: Annotated[Path | None, typer.Option(help="Run directory (default runs/<name>).")] = None,
    stores: Annotated[list[str] | None, typer.Option(help="Store names under the store dir.")] = None,
    report: Annotated[bool, typer.Option(help="Also write report.md and report.html.")] = False,
    set_: SetOpt = None,
) -> None:
    """Score the test stores with a trained run; write metrics, scores and a report."""
    from clare.stages.evaluate import run_eval

    run_eval(_load(config, set_), run_dir=run, stores=stores or None, report=report)


@app.command()
def show(
    report_dir: Annotated[
        Path | None,
        typer.Argument(help="Report folder (default: <reports>/<run> from params.yaml)."),
    ] = None,
    params: Annotated[Path, typer.Option(help="DVC params file naming reports and run.")] = Path("params.yaml"),
) -> None:
    """Print the per-subset AUC table of an evaluation and the path of its report."""
    from clare.stages.evaluate import show_report

    if report_dir is None:
        import yaml

        from clare.errors import ConfigError

        if not params.is_file():
            raise ConfigError(f"{params}: not found; pass the report folder, e.g. `clare show reports/demo`")
        values = yaml.safe_load(params.read_text()) or {}
        report_dir = Path(str(values.get("reports", "reports"))) / str(values.get("run", "demo"))
    show_report(report_dir)


@app.command()
def compare(
    runs: Annotated[
        list[Path], typer.Argument(help="Report folders (reports/<run>) or run folders (runs/<run>).")
    ],
    metric: Annotated[str, typer.Option(help="Any per-subset metric of metrics.json.")] = "auc",
    bootstrap: Annotated[int, typer.Option(help="Video resamples for the AUC intervals (0: none).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("reports/compare"),
) -> None:
    """Table of runs x test subsets (DF40 groups, mean, best marked, AUC 95% intervals) as
    Markdown, CSV, LaTeX and HTML with ROC overlays and the robustness table."""
    from clare.compare import run_compare

    run_compare(runs, metric=metric, n_resamples=bootstrap, out_dir=out, seed=seed)


@app.command()
def info(store: Annotated[Path, typer.Argument(help="Store directory.")]) -> None:
    """Print counts, shapes, bytes per image, fingerprint, shard completion and failures."""
    from clare.cache.inspect import print_info

    print_info(store)


@app.command()
def verify(store: Annotated[Path, typer.Argument(help="Store directory.")]) -> None:
    """Check a store against its manifest and shard checksums; exit 1 naming damaged shards."""
    from clare.cache.inspect import run_verify

    if not run_verify(store):
        raise typer.Exit(1)


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("data/demo"),
    seed: int = 0,
) -> None:
    """Write the synthetic mini-DF40 (DF40 layout and JSON lists, planted generator artifacts)."""
    from clare.data.demo import write_demo_dataset

    summary = write_demo_dataset(out, seed=seed)
    typer.echo(f"wrote {summary.n_images} images and {summary.n_lists} lists under {out}")


@models_app.command("tiny")
def models_tiny(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("models/tiny"),
    seed: int = 0,
) -> None:
    """Write tiny random-weight SD (diffusers) and CLIP (open_clip) models for tests and the demo."""
    from clare.models.tiny import build_tiny_models

    paths = build_tiny_models(out, seed=seed)
    for what, path in paths.items():
        typer.echo(f"{what}: {path}")


@app.command("config")
def show_config(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Validate a config and print it with every default filled in."""
    import yaml

    from clare.config import config_to_dict

    typer.echo(yaml.safe_dump(config_to_dict(_load(config, set_)), sort_keys=False))


def main() -> None:
    try:
        app()
    except ClareError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
