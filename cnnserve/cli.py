"""The ``cnnserve`` command line: list, export, train, score, tune, bench.

Thin on purpose: each command parses its options and calls one function of ``export``, ``cnnserve.demos``,
``cnnserve.score`` or ``cnnserve.bench``. Errors a user can fix end the command with a one-line message and
exit code 2, not a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from .bench import FAMILIES

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])

# `cnnserve train NAME` → (module, function); each trains reproducibly and writes <model>.safetensors + <model>.json.
DEMOS: dict[str, tuple[str, str]] = {
    "lenet5-digits": ("cnnserve.demos.digits", "train_lenet5_digits"),
    "unet-shapes": ("cnnserve.demos.unet_shapes", "train_unet_shapes"),
    "cae-digits": ("cnnserve.demos.cae_digits", "train_cae_digits"),
    "yolo-shapes": ("cnnserve.demos.yolo_shapes", "train_yolo_shapes"),
}


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    # Our own progress at INFO; the exporter's libraries (onnxscript, onnx_ir) only when asked with -v.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("cnnserve").setLevel(logging.DEBUG if verbose else logging.INFO)


@app.command("list")
def list_cmd(task: Annotated[str | None, typer.Option(help="only this task")] = None) -> None:
    """The model registry: name, task, input size, parameters, torchvision counterpart."""
    import torch

    from models import build_model, get_spec, list_models

    typer.echo(f"{'name':<26}{'task':<16}{'input':<14}{'params':>14}  torchvision")
    for name in list_models(task):
        spec = get_spec(name)
        with torch.device("meta"):  # counts parameters without allocating them (ViT-H/14 is 632 M)
            params = sum(p.numel() for p in build_model(name).parameters())
        size = f"{spec.in_channels}×{spec.input_size[0]}×{spec.input_size[1]}"
        typer.echo(f"{name:<26}{spec.task:<16}{size:<14}{params:>14,}  {spec.torchvision or '-'}")


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
) -> None:
    """Build, load weights, export ONNX (dynamic batch), check parity, [make the fp16/int8/uint8 variant and
    measure its quality drop], save to the BentoML model store."""
    from export import DEFAULT_EXPORTS, ExportError, export_model
    from export.pipeline import store_tag
    from export.weights import WeightsError

    if defaults:
        jobs = list(DEFAULT_EXPORTS)
    elif name:
        jobs = [(name, weights)]
    else:
        raise _fail("give a model NAME or --defaults")
    for model_name, model_weights in jobs:
        if missing_only and _in_store(store_tag(model_name, precision, input_dtype)):
            typer.echo(f"{model_name}: already in the store")
            continue
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


def _in_store(name: str) -> bool:
    from service.errors import ModelNotFound
    from service.store import find_entry

    try:
        return find_entry(name).path is not None
    except ModelNotFound:
        return False


@app.command()
def train(
    demo: Annotated[str, typer.Argument(help=f"one of: {', '.join(DEMOS)}")],
    output_dir: Annotated[
        Path | None, typer.Option(help="where to write the weights (default: models/weights)")
    ] = None,
) -> None:
    """Train a shipped demo model reproducibly (fixed seed) and write its weights + training record."""
    import importlib
    import json

    if demo not in DEMOS:
        raise _fail(f"unknown demo {demo!r}; choose one of {', '.join(DEMOS)}")
    from export.weights import DEMO_WEIGHTS_DIR

    module, function = DEMOS[demo]
    trainer = getattr(importlib.import_module(module), function)
    record = trainer(output_dir or DEMO_WEIGHTS_DIR, log=typer.echo)
    typer.echo(json.dumps(record, indent=2))


@app.command()
def bento(
    models: Annotated[
        list[str] | None, typer.Argument(help="store tags to pack (default: CNNSERVE_MODELS, else bentofile.yaml)")
    ] = None,
    version: Annotated[str | None, typer.Option(help="bento version (default: generated)")] = None,
) -> None:
    """Build the torch-free serving bento (bentofile.yaml) with the chosen exported models inside."""
    from service.errors import ServeError
    from service.settings import get_settings

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
    """Write a Triton / KServe model repository (<model>/1/model.onnx + config.pbtxt) from the store."""
    from service.errors import ServeError

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
    resume: Annotated[bool, typer.Option(help="skip images already in OUTPUT")] = False,
    engine: Annotated[str, typer.Option(help="local (this machine) or ray (Ray Data actors)")] = "local",
    workers: Annotated[int, typer.Option(min=1, help="local: processes; ray: actors (one session each)")] = 1,
    ray_address: Annotated[
        str | None, typer.Option(help="ray: cluster to join (auto, ray://HOST:10001); default a local Ray")
    ] = None,
) -> None:
    """Batch scoring: one record per image, the same answer as the HTTP service."""
    from tqdm import tqdm

    from service.errors import ServeError
    from service.settings import get_settings

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
            max_pixels=settings.max_pixels,
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
    """Measure each model's batch-cost curve on this machine; the service then batches each model by its own."""
    from service.errors import ServeError

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


bench_app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    help="Benchmarks. With no subcommand: the whole suite (runtime, served endpoint, peer) → benchmarks/RESULTS.md.",
)
app.add_typer(bench_app, name="bench")


def _csv_ints(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {value!r}") from None


@bench_app.callback()
def bench(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="the main model (registered name; with --http: a served model)")] = (
        "resnet50"
    ),
    families: Annotated[
        str, typer.Option(help="classifier family members timed at batch 1 (comma-separated; '' to skip)")
    ] = ",".join(FAMILIES),
    batches: Annotated[str, typer.Option(help="batch sizes for the main model")] = "1,8,32",
    clients: Annotated[str, typer.Option(help="concurrent HTTP clients")] = "1,4,16,32",
    duration: Annotated[float, typer.Option(min=0.1, help="seconds of load per concurrency level")] = 15.0,
    repeats: Annotated[int, typer.Option(min=1, help="timed runs per batch size")] = 10,
    parts: Annotated[
        str, typer.Option(help="which parts: families,runtime,served,peer")
    ] = "families,runtime,served,peer",
    output_dir: Annotated[Path, typer.Option(help="where RESULTS.md, results.json and the plots go")] = Path(
        "benchmarks"
    ),
    http: Annotated[str | None, typer.Option(help="load-test a running service at this URL (= bench http)")] = None,
    image: Annotated[Path | None, typer.Option(help="--http: the image to send (default: a digit)")] = None,
    route: Annotated[str, typer.Option(help="--http: endpoint")] = "/classify",
    concurrency: Annotated[int, typer.Option(min=1, help="--http: concurrent clients")] = 8,
    expect: Annotated[str | None, typer.Option(help="--http: count answers whose top label differs as errors")] = None,
    output: Annotated[Path | None, typer.Option(help="--http: JSON results file")] = None,
) -> None:
    """The benchmark suite: onnxruntime fp32/int8 vs PyTorch eager (batch sizes, every classifier family), the
    served endpoint and a FastAPI + PyTorch peer under concurrent clients; targets as measured ratios."""
    if ctx.invoked_subcommand is not None:
        return
    if http:
        _http_load(http, model, image, route, concurrency, duration, expect, output or Path("bench-results/load.json"))
        return
    from .bench import run_suite

    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    unknown = set(chosen) - {"families", "runtime", "served", "peer"}
    if unknown:
        raise _fail(f"unknown part(s) {', '.join(sorted(unknown))}; choose from families, runtime, served, peer")
    try:
        run_suite(
            model=model,
            families=tuple(f.strip() for f in families.split(",") if f.strip()),
            batch_sizes=_csv_ints(batches),
            clients=_csv_ints(clients),
            duration=duration,
            repeats=repeats,
            output_dir=output_dir,
            parts=chosen,
            log=typer.echo,
        )
    except KeyError as exc:
        raise _fail(str(exc).strip("'\"")) from None
    typer.echo(f"results written to {output_dir / 'RESULTS.md'} and {output_dir / 'results.json'}")


def _http_load(
    url: str,
    model: str,
    image: Path | None,
    route: str,
    concurrency: int,
    duration: float,
    expect: str | None,
    output: Path,
) -> None:
    from .loadtest import run_load

    if image is None:
        from .demos.digits import digit_png, digits_split

        split = digits_split()
        data, expect = digit_png(split.test_images[0]), expect or str(split.test_labels[0])
    else:
        data = image.read_bytes()
    result = run_load(
        url,
        image=data,
        route=route,
        fields={"model": model} if model else {},
        concurrency=concurrency,
        duration=duration,
        expect=expect,
        output=output,
        log=typer.echo,
    )
    typer.echo(f"results written to {output}")
    if result["requests"] == 0:
        raise _fail(f"no request reached {url}")


@bench_app.command("http")
def bench_http(
    url: Annotated[str, typer.Argument(help="base URL of a running service")],
    model: Annotated[str, typer.Option(help="served model")] = "lenet5",
    image: Annotated[Path | None, typer.Option(help="the image to send (default: a digit)")] = None,
    route: Annotated[str, typer.Option(help="endpoint")] = "/classify",
    concurrency: Annotated[int, typer.Option(min=1, help="concurrent clients")] = 8,
    duration: Annotated[float, typer.Option(min=0.1, help="seconds")] = 10.0,
    expect: Annotated[str | None, typer.Option(help="count answers whose top label differs as errors")] = None,
    output: Annotated[Path, typer.Option(help="JSON results file")] = Path("bench-results/load.json"),
) -> None:
    """Closed-loop HTTP load against a running service: requests/s, p50/p95/p99, errors."""
    _http_load(url, model, image, route, concurrency, duration, expect, output)


def _csv_floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


@bench_app.command("serve")
def bench_serve(
    model: Annotated[str, typer.Option(help="store tag to serve, e.g. resnet50-fp16-u8 (export it first)")] = (
        "resnet50"
    ),
    clients: Annotated[str, typer.Option(help="concurrent clients for cnnserve")] = "1,16,64,256",
    peer_clients: Annotated[str, typer.Option(help="concurrent clients for the peers")] = "1,64",
    duration: Annotated[float, typer.Option(min=0.5, help="seconds of load per level")] = 8.0,
    api_workers: Annotated[str, typer.Option(help="API-worker counts to try (0 = auto)")] = "0",
    jpeg_draft: Annotated[str, typer.Option(help="CNNSERVE_JPEG_DRAFT values to try")] = "1.0",
    peers: Annotated[str, typer.Option(help="peers to start: torch,bentoml ('' for none)")] = "torch,bentoml",
    peer_workers: Annotated[int, typer.Option(min=1, help="workers of the plain BentoML peer")] = 4,
    raw_batches: Annotated[str, typer.Option(help="batch sizes for raw onnxruntime")] = "1,8,64,256",
    client_processes: Annotated[int, typer.Option(min=0, help="load-generator processes (0 = auto)")] = 0,
    output: Annotated[Path, typer.Option(help="results JSON (summary.md next to it)")] = Path(
        "benchmarks/gpu/results.json"
    ),
) -> None:
    """The served model under heavy load (1…256 clients, 640×480 JPEGs) against the peers it starts itself, with
    raw onnxruntime, the load generator's own ceiling, and a profile of what is busy; made for the GPU machine."""
    from .bench_serve import serve_benchmark

    try:
        serve_benchmark(
            model=model,
            levels=_csv_ints(clients),
            peer_levels=_csv_ints(peer_clients),
            duration=duration,
            api_workers=_csv_ints(api_workers),
            jpeg_draft=_csv_floats(jpeg_draft),
            peers=tuple(p for p in peers.split(",") if p.strip()),
            peer_workers=peer_workers,
            raw_batches=_csv_ints(raw_batches),
            client_processes=client_processes,
            output=output,
            log=typer.echo,
        )
    except RuntimeError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"results written to {output}")


@bench_app.command("runtime")
def bench_runtime(
    model: Annotated[str, typer.Option(help="registered model name")] = "resnet50",
    batch: Annotated[list[int], typer.Option(help="batch sizes (repeat the option)")] = [1, 8],  # noqa: B006
    precision: Annotated[list[str], typer.Option(help="onnxruntime precisions (repeat): fp32, int8, fp16")] = [  # noqa: B006
        "fp32"
    ],
    repeats: Annotated[int, typer.Option(min=1)] = 20,
    threads: Annotated[int, typer.Option(help="intra-op threads for both runtimes (0 = the usable cores)")] = 0,
    output: Annotated[Path, typer.Option(help="JSON results file")] = Path("bench-results/bench.json"),
) -> None:
    """One model in-process: onnxruntime (CPU) vs PyTorch eager per batch size; results to JSON."""
    from .bench import bench_model

    try:
        bench_model(
            model,
            batch_sizes=tuple(batch),
            repeats=repeats,
            threads=threads,
            precisions=tuple(precision),
            output=output,
            log=typer.echo,
        )
    except KeyError as exc:
        raise _fail(str(exc).strip("'\"")) from None
    typer.echo(f"results written to {output}")


if __name__ == "__main__":
    app()
