"""The `clare` command line. It only parses arguments and calls a stage.

Heavy imports (torch, diffusers, open_clip) happen inside the commands so that `clare --help`
answers at once.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from clare.console import Verbosity, get_verbosity, verbosity
from clare.errors import ClareError, ConfigError, one_line

# Exit code of a bug (bad inputs exit 2, `clare verify` exits 1 on a damaged store).
INTERNAL_ERROR_EXIT = 3

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
    list[Path], typer.Option(
        "--config", "-c",
        help="YAML config file (see configs/); repeatable: later files override earlier ones "
             "key by key, e.g. -c configs/df40.yaml -c configs/clare-paper.yaml.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: dotted.key=value (repeatable)."),
]


def _apply_verbosity(ctx: typer.Context, param: typer.CallbackParam, value: bool) -> bool:
    """Run the command at the chosen verbosity (restored when the command's context closes)."""
    if not value:
        return value
    chosen = ctx.meta.setdefault("clare.verbosity", param.name)
    if chosen != param.name:
        raise ConfigError("--quiet and --verbose: pass one of them, not both")
    level = Verbosity.QUIET if param.name == "quiet" else Verbosity.VERBOSE
    ctx.with_resource(verbosity(level))
    return value


# Every command takes these. The option's callback applies them, so command bodies need not
# read the values: the stages' consoles and the library loggers follow clare.console's state.
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", callback=_apply_verbosity,
                 help="Print nothing but errors (no progress, no summaries)."),
]
VerboseOpt = Annotated[
    bool,
    typer.Option("--verbose", "-v", callback=_apply_verbosity,
                 help="Print extra detail, such as Dask's INFO log lines."),
]


def _echo(message: str) -> None:
    """typer.echo that --quiet silences."""
    if get_verbosity() is not Verbosity.QUIET:
        typer.echo(message)


def _load(config: list[Path], overrides: list[str] | None):
    from clare.config_files import load_config

    return load_config(config, overrides or [])


def _print_version(value: bool) -> None:
    if value:
        import clare

        typer.echo(f"clare {clare.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the clare version and exit.")] = False,
) -> None:
    _state["debug"] = debug
    from clare.config import check_env_switches

    check_env_switches()


@app.command()
def prepare(
    config: ConfigOpt, set_: SetOpt = None, quiet: QuietOpt = False, verbose: VerboseOpt = False
) -> None:
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
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
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
    overwrite: Annotated[bool, typer.Option(help="Replace a finished run of this name.")] = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Train the prompts and the error-guided head from the train store."""
    from clare.stages.fit import run_fit

    extra = [f"fit.{k}={v}" for k, v in
             (("module", module), ("strategy", strategy), ("attention", attention), ("name", name))
             if v is not None]
    run_fit(_load(config, [*(set_ or []), *extra]), resume=resume, overwrite=overwrite)


@app.command("eval")
def evaluate(
    config: ConfigOpt,
    run: Annotated[Path | None, typer.Option(help="Run directory (default runs/<name>).")] = None,
    stores: Annotated[list[str] | None, typer.Option(help="Store names under the store dir.")] = None,
    report: Annotated[bool, typer.Option(help="Also write report.md and report.html.")] = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Score the test stores with a trained run; write metrics, scores and a report."""
    from clare.stages.evaluate import run_eval

    run_eval(_load(config, set_), run_dir=run, stores=stores or None, report=report)


@app.command()
def predict(
    run: Annotated[Path, typer.Option(
        help="A trained run folder (runs/demo), a `clare export` folder or a hub id owner/name.")],
    inputs: Annotated[list[str] | None, typer.Argument(
        help="Image or video files, folders (recursive) or glob patterns.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default predictions/<run name>).")] = None,
    list_file: Annotated[Path | None, typer.Option("--list", help="A file with one input path a line.")] = None,
    config: Annotated[list[Path] | None, typer.Option(
        "--config", "-c", help="Change settings that do not shape features (device, batch size); "
        "repeatable, later files win.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per model batch.")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="Fake when p_fake >= this (default: the run's validation EER threshold).")] = None,
    explain: Annotated[bool, typer.Option(
        help="Write a PNG per input (LaRE map, attention) and gallery.html.")] = False,
    faces: Annotated[str, typer.Option(
        help="none: the inputs are face crops already (like DF40's); detect: crop each to its "
             "largest face, aligned by its landmarks as DF40's crops are (needs pip install "
             "'clare[faces]').")] = "none",
    store: Annotated[Path | None, typer.Option(
        help="Also write the computed features as a feature store in this new folder.")] = None,
    fail_on_error: Annotated[bool, typer.Option(help="Exit 1 when any input failed.")] = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Score new images and videos with a trained run; write predictions.csv and .parquet."""
    from clare.stages.predict import PredictOptions, run_predict

    options = PredictOptions(out_dir=out, device=device, batch_size=batch_size,
                             threshold=threshold, explain=explain, faces=faces, store=store)
    summary = run_predict(run, inputs or [], list_file=list_file, config_files=config or [],
                          overrides=set_ or [], options=options)
    if fail_on_error and summary.failed:
        raise typer.Exit(1)


@app.command("export")
def export_(
    run: Annotated[Path, typer.Argument(help="A trained run folder, e.g. runs/demo.")],
    out: Annotated[Path, typer.Argument(help="A new folder for the shareable detector.")],
    report: Annotated[Path | None, typer.Option(
        help="Its evaluation (default reports/<run name>): the model card's metrics.")] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Package a run for sharing (Hugging Face Hub ready): weights, path-free record, model card."""
    from clare.console import make_console
    from clare.export import export_run

    folder = export_run(run, out, report_dir=report)
    make_console(quiet=quiet).print(f"{folder}: exported; upload it with `huggingface-cli upload "
                                    f"OWNER/NAME {folder}`, load it with `clare predict --run`")


@app.command()
def show(
    report_dir: Annotated[
        Path | None,
        typer.Argument(help="Report folder (default: <reports>/<run> from params.yaml)."),
    ] = None,
    params: Annotated[Path, typer.Option(help="DVC params file naming reports and run.")] = Path("params.yaml"),
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Print the per-subset AUC table of an evaluation and the path of its report."""
    from clare.stages.evaluate import report_dir_from_params, show_report

    show_report(report_dir if report_dir is not None else report_dir_from_params(params))


@app.command()
def compare(
    runs: Annotated[
        list[Path], typer.Argument(help="Report folders (reports/<run>) or run folders (runs/<run>).")
    ],
    metric: Annotated[str, typer.Option(help="Any per-subset metric of metrics.json.")] = "auc",
    bootstrap: Annotated[int, typer.Option(help="Video resamples for the AUC intervals (0: none).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("reports/compare"),
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Table of runs x test subsets (DF40 groups, mean, best marked, AUC 95% intervals) as
    Markdown, CSV, LaTeX and HTML with ROC overlays and the robustness table."""
    from clare.compare import run_compare

    run_compare(runs, metric=metric, n_resamples=bootstrap, out_dir=out, seed=seed)


@app.command()
def info(
    store: Annotated[Path, typer.Argument(help="Store directory.")],
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Print counts, shapes, bytes per image, fingerprint, shard completion and failures."""
    from clare.store_view import print_info

    print_info(store)


@app.command()
def verify(
    store: Annotated[Path, typer.Argument(help="Store directory.")],
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Check a store against its manifest and shard checksums; exit 1 naming damaged shards."""
    from clare.store_view import run_verify

    if not run_verify(store):
        raise typer.Exit(1)


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("data/demo"),
    seed: int = 0,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write the synthetic mini-DF40 (DF40 layout and JSON lists, planted generator artifacts)."""
    from clare.data.demo import write_demo_dataset

    summary = write_demo_dataset(out, seed=seed)
    _echo(f"wrote {summary.n_images} images and {summary.n_lists} lists under {out}")


@models_app.command("tiny")
def models_tiny(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("models/tiny"),
    seed: int = 0,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write tiny random-weight SD (diffusers) and CLIP (open_clip) models for tests and the demo."""
    from clare.models.tiny import build_tiny_models

    paths = build_tiny_models(out, seed=seed)
    for what, path in paths.items():
        _echo(f"{what}: {path}")


@models_app.command("download")
def models_download(
    out: Annotated[Path, typer.Option(help="Output folder (sd15/, clip/, README).")] = Path("weights"),
    sd_revision: Annotated[str | None, typer.Option(
        help="Branch, tag or commit of stable-diffusion-v1-5/stable-diffusion-v1-5 "
             "(default: main; the commit it resolves to is recorded in OUT/README).")] = None,
    clip_revision: Annotated[str | None, typer.Option(
        help="Branch, tag or commit of the hub repo of open_clip's ViT-L-14 'openai' tag "
             "(default: main).")] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Fetch the SD1.5 parts and the CLIP ViT-L-14 'openai' file (safetensors, resumable)."""
    from clare.models.download import config_lines, download_weights
    from clare.models.hub import CLIP_REVISION, SD15_REVISION

    download_weights(out, sd_revision=sd_revision or SD15_REVISION,
                     clip_revision=clip_revision or CLIP_REVISION, log=_echo)
    _echo(f"wrote {out / 'README'} (sources, commits, sha256); next: clare models check {out}")
    _echo("config lines (under `models:`, with local_files_only: true):")
    for line in config_lines(out):
        _echo(line)


@models_app.command("check")
def models_check(
    target: Annotated[Path, typer.Argument(
        help="A config file, a `clare models download` folder or a diffusers SD folder.")],
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Check weights without loading them: files, configs, tensor names and shapes, fingerprint."""
    import json

    from clare.errors import ModelLoadError
    from clare.models.check import check_target

    report = check_target(target, set_ or [])
    for line in report.ok:
        _echo(f"ok: {line}")
    for line in report.problems:
        typer.echo(f"problem: {line}", err=True)
    if report.problems:
        more = f" ({len(report.problems) - 1} more above)" if len(report.problems) > 1 else ""
        raise ModelLoadError(f"{report.problems[0]}{more}")
    if report.fingerprint is not None:
        _echo("fingerprint stores will record:")
        _echo(json.dumps(report.fingerprint, indent=2))


@app.command("config")
def show_config(
    config: ConfigOpt,
    set_: SetOpt = None,
    origins: Annotated[bool, typer.Option(
        help="Print one line per setting with the file, --set or default it came from.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Validate a config (its layers merged) and print it with every default filled in."""
    import json

    import yaml

    from clare.config_files import config_layers, config_origins, config_to_dict, validate_layers

    layers = config_layers(config, set_ or [])
    cfg = validate_layers(layers)
    if not origins:
        _echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        return
    for key, value, origin in config_origins(cfg, layers):
        _echo(f"{key}: {json.dumps(value)}  # {origin}")


# Whole messages are one line of at most this many characters, whatever they quote.
_MESSAGE_LIMIT = 1000


def _one_line(text: str) -> str:
    return one_line(" ".join(text.split("\n")), _MESSAGE_LIMIT)


# What to do about the OSErrors that name a file the user gave or let clare write.
_OS_ERROR_HINTS = {
    errno.ENAMETOOLONG: "shorten the path (a name in it is longer than the file system allows)",
    errno.ELOOP: "a symbolic link loops; fix or remove it",
    errno.EACCES: "fix the permissions or choose another path",
    errno.EPERM: "fix the permissions or choose another path",
    errno.EROFS: "choose a writable location",
    errno.ENOSPC: "free some space and rerun",
    errno.EDQUOT: "free some space (disk quota) and rerun",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "expected a file, found a folder; check the path",
}


def _os_error_line(exc: OSError) -> str | None:
    """`<file>: <what the system said>; <what to do>` for an OSError about a named file (a
    name too long, a symlink loop, no permission, a full disk, ...); None when it names no
    file and is not a full disk."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    if not names and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = " -> ".join(names) if names else "disk"
    what = exc.strerror or type(exc).__name__
    return f"{where}: {what}; {_OS_ERROR_HINTS.get(exc.errno or 0, 'check the path and rerun')}"


def main() -> None:
    try:
        app()
    except ClareError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {_one_line(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        line = _os_error_line(exc)
        if _state["debug"] or line is None:
            _internal_error(exc)
        typer.echo(f"error: {_one_line(line)}", err=True)
        sys.exit(ClareError.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last resort: a bug, said as one
        _internal_error(exc)


def _internal_error(exc: Exception) -> NoReturn:
    """A bug, not a bad input: never hidden, but one line unless --debug asks for the traceback."""
    if _state["debug"]:
        raise exc
    typer.echo(f"internal error: {type(exc).__name__}: {one_line(exc, _MESSAGE_LIMIT)} "
               "(rerun with --debug for the traceback and report it)", err=True)
    sys.exit(INTERNAL_ERROR_EXIT)


if __name__ == "__main__":
    main()
