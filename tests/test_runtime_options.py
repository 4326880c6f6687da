"""onnxruntime session options: threads matched to the cores and processes, and the optimised-graph cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from cnnserve.service.runtime.model import load_model
from cnnserve.service.runtime.sessions import SessionConfig, available_cores, cache_key, create_session, session_threads
from cnnserve.service.settings import Settings


@pytest.mark.parametrize(
    ("cores", "processes", "expected"),
    [(2, 1, (2, 1)), (16, 4, (4, 1)), (16, 3, (5, 1)), (2, 4, (1, 1)), (1, 1, (1, 1))],
)
def test_threads_split_the_cores_between_processes(cores: int, processes: int, expected: tuple[int, int]) -> None:
    assert session_threads(cores, processes) == expected


def test_explicit_threads_win() -> None:
    assert session_threads(16, 4, intra=3, inter=2) == (3, 2)


def test_cores_are_the_affinity_capped_by_the_cgroup_quota() -> None:
    assert available_cores(affinity={0, 1, 2, 3}, cgroup_limit=None) == 4
    assert available_cores(affinity={0, 1, 2, 3}, cgroup_limit=2.5) == 2
    assert available_cores(affinity={0, 1, 2, 3}, cgroup_limit=0.5) == 1
    assert available_cores(affinity=set(range(64)), cgroup_limit=8.0) == 8
    assert available_cores() == min(len(os.sched_getaffinity(0)), available_cores())  # this machine, uncapped


def test_cgroup_quota_file(tmp_path: Path) -> None:
    from cnnserve.service.runtime.sessions import _cgroup_cpu_limit

    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert _cgroup_cpu_limit(cpu_max) is None
    cpu_max.write_text("250000 100000\n")
    assert _cgroup_cpu_limit(cpu_max) == 2.5
    assert _cgroup_cpu_limit(tmp_path / "missing") is None


def test_settings_give_each_session_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    one_tier = Settings(tiers="one", api_workers=4)
    assert one_tier.session_processes() == 4
    config = SessionConfig.from_settings(one_tier)
    assert config.threads(cores=16) == (4, 1)
    options = config.options(cores=16)
    assert options.intra_op_num_threads == 4 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"

    two_tier = Settings(tiers="two", api_workers=4)  # only the model tier holds sessions
    assert SessionConfig.from_settings(two_tier).threads(cores=16) == (16, 1)
    spinning = SessionConfig(spinning=True).options(cores=8)  # a measurement's choice, not a setting
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert SessionConfig.from_settings(Settings(tiers="one", intra_op_threads=3)).threads(cores=16) == (3, 1)
    assert SessionConfig.from_settings(Settings(ort_cache=False)).cache_dir is None
    assert SessionConfig.from_settings(Settings(ort_cache_dir="/x/y")).cache_dir == Path("/x/y")


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cnnserve.export import export_model

    path = tmp_path_factory.mktemp("lenet") / "lenet5.onnx"
    export_model("lenet5", weights="demo", output=path, save=False)
    return path


def test_second_load_uses_the_cached_optimised_graph(lenet_file: Path, tmp_path: Path) -> None:
    config = SessionConfig(cache_dir=tmp_path / "cache")
    first = load_model("lenet5", lenet_file, providers=["CPUExecutionProvider"], session_config=config)
    assert first.info.ready and first.info.session_cache == "written"
    (cached,) = (tmp_path / "cache").glob("*.onnx")
    assert cached.stem == cache_key(lenet_file, ["CPUExecutionProvider"])
    # the cached graph is the portable one: no NCHWc nodes, which are specific to the CPU (and made onnxruntime
    # warn on every start when it serialised them); the session adds them when it loads
    import onnx

    assert not any(node.domain == "com.microsoft.nchwc" for node in onnx.load(str(cached)).graph.node)
    second = load_model("lenet5", lenet_file, providers=["CPUExecutionProvider"], session_config=config)
    assert second.info.ready and second.info.session_cache == "hit"
    assert second.info.contract == first.info.contract  # the metadata survives optimisation
    x = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(second.run(x)["probabilities"], first.run(x)["probabilities"], atol=1e-6)
    # Another file (or onnxruntime version, providers, CPU) is another key: never a stale graph.
    other = tmp_path / "other.onnx"
    other.write_bytes(lenet_file.read_bytes() + b"\n")
    assert cache_key(other, ["CPUExecutionProvider"]) != cached.stem


def test_the_cache_keeps_the_most_recently_used_graphs(lenet_file: Path, tmp_path: Path) -> None:
    config = SessionConfig(cache_dir=tmp_path, cache_entries=2)
    old = [tmp_path / f"old{i}.onnx" for i in range(3)]
    for i, path in enumerate(old):
        path.write_bytes(b"stale")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    assert create_session(lenet_file, ["CPUExecutionProvider"], config)[1] == "written"
    kept = sorted(p.name for p in tmp_path.glob("*.onnx"))
    assert kept == sorted([f"{cache_key(lenet_file, ['CPUExecutionProvider'])}.onnx", "old2.onnx"])


def test_a_torn_cache_file_is_replaced(lenet_file: Path, tmp_path: Path) -> None:
    config = SessionConfig(cache_dir=tmp_path)
    key = cache_key(lenet_file, ["CPUExecutionProvider"])
    (tmp_path / f"{key}.onnx").write_bytes(b"\x08\x07torn")
    session, cache = create_session(lenet_file, ["CPUExecutionProvider"], config)
    assert cache == "written" and session.get_inputs()[0].name == "images"
    assert create_session(lenet_file, ["CPUExecutionProvider"], config)[1] == "hit"


def test_an_unusable_cache_dir_falls_back_silently(lenet_file: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    for cache_dir in (blocked, blocked / "below-a-file"):  # not a directory / cannot be created
        model = load_model(
            "lenet5", lenet_file, providers=["CPUExecutionProvider"], session_config=SessionConfig(cache_dir=cache_dir)
        )
        assert model.info.ready and model.info.session_cache == "off" and model.info.error is None
    assert blocked.read_text() == ""


def test_a_silent_fallback_from_cuda_to_cpu_is_caught(lenet_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    # This machine has no GPU: onnxruntime prints an EP error and builds a CPU session instead of failing — as it
    # did on the H100 for a device id the machine lacked (benchmarks/gpu/tune/cuda_options.json).
    asked = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    strict = load_model("lenet5", lenet_file, providers=asked, device_id=7, strict_providers=True)
    assert not strict.info.ready and "fell back to CPUExecutionProvider" in strict.info.error
    with caplog.at_level("ERROR", logger="cnnserve.runtime"):
        lenient = load_model("lenet5", lenet_file, providers=asked)
    assert lenient.info.ready and lenient.info.providers == ("CPUExecutionProvider",)
    assert "fell back" in caplog.text  # served, but never silently
