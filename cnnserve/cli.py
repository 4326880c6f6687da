"""cnnserve: vision networks exported to ONNX and served torch-free, with the commands list, export, train, score,
tune, bento, export-repo and bench.

Thin on purpose: each command parses its options and calls one function of ``cnnserve.export``, its demos,
``cnnserve.score`` or, in a source checkout, ``benchmarks``. Errors a user can fix end the command with a one-line
message and exit code 2, not a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

# Help as plain text (click's layout: flags show no type, option values a name), and -h as well as --help.
HELP = __doc__.split("\n\n")[0].replace("\n", " ")
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=HELP,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)

# `cnnserve train NAME` → (module, function); each trains reproducibly and writes <model>.safetensors + <model>.json.
DEMOS: dict[str, tuple[str, str]] = {
    "lenet5-digits": ("cnnserve.export.demos.digits", "train_lenet5_digits"),
    "unet-shapes": ("cnnserve.export.demos.unet_shapes", "train_unet_shapes"),
    "cae-digits": ("cnnserve.export.demos.cae_digits", "train_cae_digits"),
    "inpaint-digits": ("cnnserve.export.demos.inpaint_digits", "train_inpaint_digits"),
    "vae-digits": ("cnnserve.export.demos.vae_digits", "train_vae_digits"),
    "yolo-shapes": ("cnnserve.export.demos.yolo_shapes", "train_yolo_shapes"),
    "yolo-shapes-conv": ("cnnserve.export.demos.yolo_shapes", "train_yolo_shapes_conv"),
}


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    # Our own progress at INFO; the exporter's libraries (onnxscript, onnx_ir) only when asked with -v.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("cnnserve").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:  # the exporter's IR library warns about attributes of its own ops (aten::index_put's Constant)
        logging.getLogger("onnx_ir").setLevel(logging.ERROR)


@app.command("list")
def list_cmd(task: Annotated[str | None, typer.Option(help="only this task")] = None) -> None:
    """The model registry. Name, task, input size, parameters and the torchvision counterpart of every model."""
    import torch

    from cnnserve.models import build_model, get_spec, list_models

    rows = [("name", "task", "input", "params", "torchvision")]
    for name in list_models(task):
        spec = get_spec(name)
        with torch.device("meta"):  # counts parameters without allocating them (ViT-H/14 is 632 M)
            params = sum(p.numel() for p in build_model(name).parameters())
        size = f"{spec.in_channels}×{spec.input_size[0]}×{spec.input_size[1]}"
        rows.append((name, spec.task, size, f"{params:,}", spec.torchvision or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:  # columns as wide as their longest cell, two spaces apart; parameters right-aligned
        typer.echo(
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]:>{widths[3]}}  {row[4]}"
        )


@app.command()
def export(
    name: Annotated[str | None, typer.Argument(help="registered model name (cnnserve list)")] = None,
    weights: Annotated[str, typer.Option(help="random | torchvision | demo | PATH (.pth/.pt/.safetensors)")] = "random",
    precision: Annotated[str, typer.Option(help="fp32 | fp16 (for CUDA) | int8 (static, QDQ)")] = "fp32",
    input_dtype: Annotated[str, typer.Option(help="float32 ([0, 1]) | uint8 (0-255, scaled in the graph)")] = "float32",
    calibration: Annotated[
        Path | None, typer.Option(help="int8: folder of images to calibrate on (default: demo data or photos)")
    ] = None,
    tag: Annotated[
        str | None, typer.Option(help="store name (default: NAME, NAME-fp16/-int8, then -u8 for uint8 input)")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="also write the ONNX file here")] = None,
    num_classes: Annotated[int | None, typer.Option(help="replace the head (random or own weights)")] = None,
    defaults: Annotated[bool, typer.Option("--defaults", help="export the default set")] = False,
    missing_only: Annotated[bool, typer.Option(help="with --defaults: skip models already in the store")] = False,
    embedding: Annotated[
        bool, typer.Option(help="the `embedding` output (/embed); --no-embedding for one-output clients")
    ] = True,
) -> None:
    """Export a model to ONNX into the model store.

    Builds the model, loads its weights, exports ONNX (dynamic batch), checks parity with PyTorch, makes the
    fp16/int8/uint8 variant if asked (and measures its quality against fp32), saves to the BentoML model store."""
    from cnnserve.export import DEFAULT_EXPORTS, ExportError, export_model
    from cnnserve.export.pipeline import store_tag
    from cnnserve.export.weights import WeightsError

    if defaults:
        jobs = list(DEFAULT_EXPORTS)
    elif name:
        jobs = [(name, weights)]
    else:
        raise _fail("give a model NAME or --defaults")
    for model_name, model_weights in jobs:
        if missing_only:
            stored = _store_state(
                store_tag(model_name, precision, input_dtype), demo_of=model_name if model_weights == "demo" else None
            )
            if stored == "current":
                typer.echo(f"{model_name}: already in the store")
                continue
            if stored == "stale":
                typer.echo(f"{model_name}: the store's copy was made from other demo weights; exporting again")
        try:
            result = export_model(
                model_name,
                weights=model_weights,
                precision=precision,
                input_dtype=input_dtype,
                calibration=calibration,
                tag=tag,
                output=output,
                num_classes=num_classes,
                embedding=embedding,
            )
        except (ExportError, WeightsError, KeyError) as exc:
            raise _fail(str(exc).strip("'\"")) from None
        typer.echo(
            f"{model_name}: {result.tag or result.path}  weights={result.source}  "
            f"parity max|Δ|={result.parity:.2e}  ({result.seconds:.1f} s)"
        )
        if result.quality is not None:
            q = result.quality
            typer.echo(
                f"  {result.precision}/{result.input_dtype}: {q['metric']} {q['fp32']:.4f} (fp32) → "
                f"{q['variant']:.4f}, drop {q['drop']:+.4f} on {q['data']}"
            )


def _store_state(name: str, *, demo_of: str | None = None) -> str:
    """``missing`` (no usable entry ``name``), ``stale`` (made from demo weights other than those ``demo_of``
    ships now: a pull brought new ones, or the entry predates the recorded digest) or ``current``."""
    from cnnserve.export.weights import demo_digest
    from cnnserve.service.errors import ModelNotFound
    from cnnserve.service.store import find_entry

    try:
        entry = find_entry(name)
    except ModelNotFound:
        return "missing"
    if entry.path is None:
        return "missing"
    if demo_of is not None and entry.weights_sha256 != demo_digest(demo_of):
        return "stale"
    return "current"


@app.command()
def train(
    demo: Annotated[str, typer.Argument(help=f"one of: {', '.join(DEMOS)}")],
    output_dir: Annotated[
        Path | None, typer.Option(help="where to write the weights (default: models/weights)")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="also write the run's report (metrics and timing) to this JSON file")
    ] = None,
) -> None:
    """Train a shipped demo model. Reproducible (fixed seed): writes its weights and their sidecar; the timing
    goes to the report printed here (and --report FILE), not into the tracked sidecar."""
    import importlib
    import json

    if demo not in DEMOS:
        raise _fail(f"unknown demo {demo!r}; choose one of {', '.join(DEMOS)}")
    from cnnserve.export.weights import DEMO_WEIGHTS_DIR

    module, function = DEMOS[demo]
    trainer = getattr(importlib.import_module(module), function)
    record = trainer(output_dir or DEMO_WEIGHTS_DIR, log=typer.echo)
    text = json.dumps(record, indent=2)
    typer.echo(text)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(text + "\n")


@app.command()
def bento(
    models: Annotated[
        list[str] | None, typer.Argument(help="store tags to pack (default: CNNSERVE_MODELS, else bentofile.yaml)")
    ] = None,
    version: Annotated[str | None, typer.Option(help="bento version (default: generated)")] = None,
) -> None:
    """Build the serving bento. Torch-free (bentofile.yaml), with the chosen exported models inside."""
    from cnnserve.service.errors import ServeError
    from cnnserve.service.settings import get_settings

    from .bento import build_bento

    try:
        built = build_bento(models or get_settings().models or None, version=version)
    except ServeError as exc:
        raise _fail(exc.message) from None
    packed = ", ".join(str(m.tag) for m in built.info.models)
    typer.echo(f"built {built.tag} with {packed} at {built.path}")


@app.command("export-repo")
def export_repo(
    directory: Annotated[Path, typer.Argument(help="model repository folder to write")],
    models: Annotated[list[str] | None, typer.Argument(help="store tags (default: every cnnserve model)")] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Triton's max_batch_size for batchable models")] = 16,
    max_queue_delay_us: Annotated[int, typer.Option(min=0, help="dynamic batching: longest wait (µs)")] = 1000,
) -> None:
    """Write a Triton / KServe model repository. <model>/1/model.onnx + config.pbtxt from the store."""
    from cnnserve.service.errors import ServeError

    from .export_repo import export_repository

    try:
        written = export_repository(
            directory, models, max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us
        )
    except ServeError as exc:
        raise _fail(exc.message) from None
    for folder in written:
        typer.echo(f"{folder.name}: {folder}")


@app.command()
def score(
    inputs: Annotated[
        list[str], typer.Argument(help="image files, folders (recursive), globs, or CSV/Parquet manifests of paths")
    ],
    model: Annotated[str, typer.Option(help="store tag (lenet5, lenet5:VERSION) or a path to an .onnx file")],
    output: Annotated[Path, typer.Option(help="JSONL file to write, or a Parquet folder if it ends in .parquet")],
    batch_size: Annotated[int, typer.Option(min=1, max=1024)] = 16,
    top_k: Annotated[int, typer.Option(min=1)] = 5,
    overlay: Annotated[bool, typer.Option(help="semantic segmentation: also write colour overlays")] = False,
    heatmap: Annotated[bool, typer.Option(help="autoencoder: also write per-pixel error heat maps")] = False,
    task: Annotated[
        list[str] | None,
        typer.Option(help="the answers to record, e.g. embed (repeatable); default: the model's usual answers"),
    ] = None,
    resume: Annotated[bool, typer.Option(help="skip images already in OUTPUT")] = False,
    engine: Annotated[str, typer.Option(help="local (this machine) or ray (Ray Data actors)")] = "local",
    workers: Annotated[int, typer.Option(min=1, help="local: processes; ray: actors (one session each)")] = 1,
    ray_address: Annotated[
        str | None, typer.Option(help="ray: cluster to join (auto, ray://HOST:10001); default a local Ray")
    ] = None,
) -> None:
    """Score files in batches. One record per image, the same answer as the HTTP service."""
    from tqdm import tqdm

    from cnnserve.service.errors import ServeError
    from cnnserve.service.settings import get_settings

    from .score import ENGINES, score_files

    if engine not in ENGINES:
        raise _fail(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise _fail("the ray engine needs Ray Data: pip install 'cnnserve[ray]'") from None
    settings = get_settings()
    bar = tqdm(unit="img", disable=not sys.stderr.isatty())
    try:
        counts = score_files(
            model,
            inputs,
            output,
            batch_size=batch_size,
            engine=engine,
            workers=workers,
            ray_address=ray_address,
            resume=resume,
            top_k=top_k,
            overlay=overlay,
            heatmap=heatmap,
            tasks=tuple(task or ()),
            max_pixels=settings.max_pixels,
            jpeg_draft=settings.jpeg_draft,
            providers=settings.providers,
            progress=bar.update,
            on_total=lambda n: setattr(bar, "total", n),
        )
    except ServeError as exc:
        raise _fail(exc.message) from None
    finally:
        bar.close()
    typer.echo(f"scored {counts['scored']}, failed {counts['failed']}, skipped {counts['skipped']} → {output}")


@app.command()
def tune(
    models: Annotated[
        list[str] | None, typer.Argument(help="store tags or .onnx files (default: every cnnserve model in the store)")
    ] = None,
    budget_ms: Annotated[
        float | None, typer.Option(min=0.1, help="longest one batch may run (default CNNSERVE_BATCH_BUDGET_MS)")
    ] = None,
    tolerance: Annotated[
        float | None, typer.Option(min=0.01, max=1.0, help="share of the best throughput the limit must reach")
    ] = None,
    profiles: Annotated[
        Path | None, typer.Option(help="where the curves go (default ~/.cache/cnnserve/batching.json)")
    ] = None,
    defaults: Annotated[Path | None, typer.Option(help="also merge the curves into this family defaults file")] = None,
) -> None:
    """Measure batch-cost curves here. The service then batches each model by its own curve."""
    from cnnserve.service.errors import ServeError

    from .tune import tune as run_tune

    try:
        run_tune(
            models or [],
            budget_ms=budget_ms,
            tolerance=tolerance,
            profiles_path=profiles,
            defaults_out=defaults,
            log=typer.echo,
        )
    except (ServeError, LookupError) as exc:  # an unknown tag, a file that is not ours or does not load
        raise _fail(getattr(exc, "message", str(exc))) from None


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench(ctx: typer.Context) -> None:
    """Run the benchmarks (source checkout only). `cnnserve bench --help` lists them.

    They live with the source checkout (``benchmarks/``), outside the product package, and run as their own
    program (``python -m benchmarks``), the way ``git foo`` runs ``git-foo``: the package never imports them."""
    import os
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise _fail(
            "the benchmarks ship with the source checkout, not the package: clone the repository, run them there"
        )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    raise typer.Exit(subprocess.call([sys.executable, "-m", "benchmarks", *ctx.args], env=env))


if __name__ == "__main__":
    app()
