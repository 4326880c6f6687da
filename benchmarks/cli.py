"""``cnnserve bench``: the benchmark commands (suite, http, serve, triton, runtime), kept with the benchmarks outside
the product package; ``cnnserve.cli`` adds them when it runs from a source checkout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


bench_app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    rich_markup_mode=None,  # plain help, as `cnnserve --help`
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    help="Benchmarks. With no subcommand: the whole suite (runtime, served endpoint, peer) → benchmarks/RESULTS.md.",
)


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
        str | None,
        typer.Option(
            help="classifiers timed at batch 1, comma-separated ('' to skip; default: each family's, VGG aside)"
        ),
    ] = None,
    batches: Annotated[str, typer.Option(help="batch sizes for the main model")] = "1,8,32",
    clients: Annotated[str, typer.Option(help="concurrent HTTP clients")] = "1,4,16,32",
    duration: Annotated[float, typer.Option(min=0.1, help="seconds of load per concurrency level")] = 15.0,
    repeats: Annotated[int, typer.Option(min=1, help="timed runs per batch size")] = 10,
    parts: Annotated[
        str, typer.Option(help="which parts: families,runtime,served,peer")
    ] = "families,runtime,served,peer",
    output_dir: Annotated[
        Path | None,
        typer.Option(
            help="where RESULTS.md, results.json and the plots go (default: benchmarks/ for the whole suite as "
            "committed, bench-results/ for a partial or changed run, so the committed results stay as they are)"
        ),
    ] = None,
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
    from .suite import ROOT, run_suite

    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    unknown = set(chosen) - {"families", "runtime", "served", "peer"}
    if unknown:
        raise _fail(f"unknown part(s) {', '.join(sorted(unknown))}; choose from families, runtime, served, peer")
    if output_dir is None:
        output_dir = ROOT / "benchmarks" if _is_committed_run(ctx) else Path("bench-results")
    try:
        run_suite(
            model=model,
            families=None if families is None else tuple(f.strip() for f in families.split(",") if f.strip()),
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


def _is_committed_run(ctx: typer.Context) -> bool:
    """The whole suite with its default settings: the run whose results are committed in benchmarks/. Any option
    that changes what is measured makes a different table, which must not replace that record."""
    return _all_default(ctx, ("model", "families", "batches", "clients", "duration", "repeats", "parts"))


def _all_default(ctx: typer.Context, names: tuple[str, ...]) -> bool:
    """Every one of these options left at its default. Compared by name: typer runs its own copy of click
    (``typer._click``), whose ``ParameterSource`` is not ``click.core``'s, so an ``is`` test is never true."""
    return all(getattr(ctx.get_parameter_source(name), "name", None) == "DEFAULT" for name in names)


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
        from cnnserve.export.demos.digits import digit_png, digits_split

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
    output: Annotated[
        Path, typer.Option(help="results JSON, summary.md next to it (the GPU record: benchmarks/gpu/results.json)")
    ] = Path("bench-results/serve.json"),
) -> None:
    """The served model under heavy load (1…256 clients, 640×480 JPEGs) against the peers it starts itself, with
    raw onnxruntime, the load generator's own ceiling, and a profile of what is busy; made for the GPU machine."""
    from .serve import serve_benchmark

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


@bench_app.command("triton")
def bench_triton(
    model: Annotated[str, typer.Option(help="classifier to export with uint8 input and serve")] = "lenet5",
    levels: Annotated[str, typer.Option(help="perf_analyzer concurrencies")] = "1,8",
    protocols: Annotated[str, typer.Option(help="http, grpc or both")] = "http,grpc",
    interval_ms: Annotated[int, typer.Option(min=500, help="perf_analyzer's measurement window")] = 5000,
    venv: Annotated[Path | None, typer.Option(help="perf_analyzer's own venv (made on first use)")] = None,
    output: Annotated[Path, typer.Option(help="results JSON (RESULTS.md next to it)")] = Path(
        "benchmarks/triton/results.json"
    ),
) -> None:
    """Triton's perf_analyzer against the service's /v2 (HTTP) and gRPC: one classifier, a few concurrencies."""
    from .triton import DEFAULT_VENV, triton_benchmark

    chosen = tuple(p.strip() for p in protocols.split(",") if p.strip())
    if not chosen or set(chosen) - {"http", "grpc"}:
        raise _fail(f"--protocols takes http, grpc or both, got {protocols!r}")
    try:
        triton_benchmark(
            model=model,
            levels=_csv_ints(levels),
            protocols=chosen,
            interval_ms=interval_ms,
            venv=venv or DEFAULT_VENV,
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
    from .suite import bench_model

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


@bench_app.command("serving-cpu")
def bench_serving_cpu(
    clients: Annotated[str, typer.Option(help="concurrent clients per level")] = "1,16,64",
    duration: Annotated[float, typer.Option(min=1.0, help="seconds of load per level")] = 15.0,
    api_workers: Annotated[int, typer.Option(min=1, help="API worker processes")] = 1,
    jpeg_draft: Annotated[float | None, typer.Option(help="CNNSERVE_JPEG_DRAFT (default: the service's)")] = None,
    output_dir: Annotated[Path, typer.Option(help="where results.json and RESULTS.md go")] = Path(
        "benchmarks/serving-cpu"
    ),
) -> None:
    """The CPU cost of serving one image through both tiers, measured with a null model (no GPU needed)."""
    from .serving_cpu import serving_cpu_benchmark

    result = serving_cpu_benchmark(
        clients=_csv_ints(clients),
        duration=duration,
        api_workers=api_workers,
        jpeg_draft=jpeg_draft,
        output_dir=output_dir,
        log=typer.echo,
    )
    typer.echo(
        f"API {result['api_cpu_ms_per_req']} ms/req, model tier {result['model_cpu_ms_per_img']} ms/img, transport "
        f"{result['transport_cpu_ms_per_img']} ms/img, {result['served_req_s_64']} req/s at 64 clients → "
        f"{output_dir / 'results.json'}"
    )


@bench_app.command("reliability")
def bench_reliability(
    ctx: typer.Context,
    clients: Annotated[int, typer.Option(min=1, help="soak: concurrent clients")] = 32,
    duration: Annotated[float, typer.Option(min=1, help="soak: seconds")] = 60.0,
    attack_seconds: Annotated[float, typer.Option(min=1, help="seconds of /livez probing under attack")] = 20.0,
    in_flight: Annotated[int, typer.Option(min=1, help="hostile uploads in flight during the attack")] = 8,
    output: Annotated[
        Path | None,
        typer.Option(
            help="results JSON, RESULTS.md next to it (default: benchmarks/reliability/results.json, the committed "
            "record; bench-results/reliability/results.json when an option changes what is measured)"
        ),
    ] = None,
) -> None:
    """The service under hostile input (starts its own, one tier, the default demo set; export it first with
    `cnnserve export --defaults`): the largest uploads the limits allow one at a time and eight at once with /livez
    probed, then a soak of good and bad requests; worker RSS throughout, 5xx counted."""
    from .reliability import reliability_benchmark
    from .suite import ROOT

    if output is None:
        committed = _all_default(ctx, ("clients", "duration", "attack_seconds", "in_flight"))
        output = (ROOT / "benchmarks" if committed else Path("bench-results")) / "reliability" / "results.json"

    try:
        result = reliability_benchmark(
            clients=clients,
            duration=duration,
            attack_seconds=attack_seconds,
            in_flight=in_flight,
            output=output,
            log=typer.echo,
        )
    except RuntimeError as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps({k: result[k] for k in list(result)[:5]}))
    typer.echo(f"results written to {output} and {output.with_name('RESULTS.md')}")
