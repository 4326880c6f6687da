"""``cnnserve score --engine ray``: the batch scorer's chain as Ray Data ``map_batches`` over a pool of actors.

Each actor holds one :class:`cnnserve.scorer.Scorer` — one onnxruntime session — built once, and turns a batch of
paths into records with exactly the code the local engine and the HTTP service run (decode → pre-process → ONNX →
answer). The ONNX file travels through Ray's object store (put once by the driver), so worker nodes need cnnserve
installed but not the driver's model store; the images (and the folder the PNG answers go to) must be at the same
paths on every node, e.g. a shared file system. Ray keeps the output in input order (``preserve_order``), and the
driver writes it through the same sink as the local engine, so resuming and the error rows work the same way.

``address=None`` starts a local Ray instance (what the tests do); ``--ray-address auto`` joins the cluster this
machine belongs to, ``ray://head:10001`` a remote one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from .scorer import Scorer, ScorerConfig

__all__ = ["ScoreActor", "ray_chunks"]


class ScoreActor:
    """A Ray Data UDF: paths in (column ``path``), records out (column ``record``, one JSON string per path)."""

    def __init__(self, config: ScorerConfig, model: list, cwd: str) -> None:
        import ray

        # Relative input and output paths mean what they meant to the driver (same paths on every node).
        if os.path.isdir(cwd):
            os.chdir(cwd)

        # The model bytes come from the object store; onnxruntime loads from a file, so write one per actor.
        handle, local = tempfile.mkstemp(suffix=".onnx", prefix=f"cnnserve-{config.name}-")
        with os.fdopen(handle, "wb") as f:
            f.write(ray.get(model[0]))
        try:
            # One CPU reserved per actor (num_cpus=1 below), so one onnxruntime thread: Ray packs actors per core.
            self.scorer = Scorer(replace(config, model_path=local, threads=config.threads or 1))
        finally:
            os.unlink(local)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = self.scorer.score([str(p) for p in batch["path"]])
        return {"record": np.array([json.dumps(r) for r in records], dtype=object)}


def ray_chunks(
    config: ScorerConfig, paths: list[str], batch_size: int, actors: int, *, address: str | None = None
) -> Iterator[list[dict]]:
    """Score ``paths`` on Ray with ``actors`` actors; yields lists of records in input order."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False

    with open(config.model_path, "rb") as f:
        model_ref = ray.put(f.read())
    dataset = ray.data.from_items([{"path": p} for p in paths]).map_batches(
        ScoreActor,
        # The ref in a list: Ray hands the actor the reference, and the actor fetches the bytes itself.
        fn_constructor_kwargs={"config": config, "model": [model_ref], "cwd": os.getcwd()},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, actors)),  # a fixed pool (`concurrency=` is deprecated)
        num_cpus=1,
    )
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield [json.loads(r) for r in batch["record"]]
