"""``python -m benchmarks …`` (what ``cnnserve bench …`` runs from a source checkout)."""

from .cli import bench_app

bench_app(prog_name="cnnserve bench")
