"""The README and docs/*.md as a test: every command block runs, against a real served process.

A fenced ``bash``/``sh``/``python`` block in README.md or docs/*.md is a command block. Each one runs here, in
document order, in a scratch folder that mirrors the checkout (its files are links to the checkout's, so what a
command creates lands in the scratch folder and what it would change in the checkout shows in ``git status``),
with its own ``BENTOML_HOME`` and a server started the README's way (``make serve``). ``localhost:3000`` in a
command is that server. A block preceded by ``<!-- illustrative: REASON -->`` is not run, and must say why.

A command's documented answer is the ``# {...}`` comment right below it: the answer must have every field shown,
and the values shown (the demos are deterministic: same weights, same input, same numbers), numbers to the
precision they are written with. ``…`` stands for what is left out: ``"key": …`` any value, ``, …]`` more
items, ``"abc…"`` a string that starts so.

Blocks that only talk to the server or make files (curl, cp, python one-liners, kubectl kustomize) run in the fast
suite; blocks that export, train, tune, benchmark, score or build bentos are ``slow`` (``make test-all``). The new
sections others add are covered the day they land: nothing here lists them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_LANGUAGES = {"bash", "sh", "shell", "python"}
ILLUSTRATIVE = re.compile(r"<!--\s*illustrative:\s*(?P<reason>.*?)\s*-->", re.S)
DOCUMENTED_URL = "localhost:3000"
DOCUMENTED_GRPC = "localhost:8001"  # Triton's gRPC port, where the service's gRPC listens by default
# A block is fast when every program it runs is one of these (by the command's first word, after `VAR=x`).
FAST_PROGRAMS = {"curl", "cp", "ls", "cat", "echo", "jq", "base64", "grep", "head", "kubectl", "mkdir", "python"}
FAST_CLI = {"list"}  # `cnnserve list` is quick; export, train, bench, tune, score, bento, export-repo are not


@dataclass
class Command:
    text: str  # the command as written (continuation lines joined)
    line: int
    expected_json: str | None = None  # the documented answer, as written (with its … elisions)


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence
    language: str
    source: str
    illustrative: str | None  # the reason, when the block is marked so
    commands: list[Command] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def slow(self) -> bool:
        if self.language == "python":
            return False
        for command in self.commands:
            for part in re.split(r"\|\||&&|;|\|", command.text):
                words = [w for w in part.split() if not re.match(r"^[A-Z_]+=", w)]
                if not words:
                    continue
                program = Path(words[0]).name
                if program == "cnnserve" and len(words) > 1 and words[1] in FAST_CLI:
                    continue
                if program not in FAST_PROGRAMS:
                    return True
        return False


def parse_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        language, start = match.group(1), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if language in COMMAND_LANGUAGES:
            before = "\n".join(lines[max(0, start - 3) : start])
            marked = ILLUSTRATIVE.search(before)
            block = Block(path, start + 1, language, "\n".join(lines[start + 1 : end]), marked and marked["reason"])
            if language != "python":
                block.commands = _commands(lines[start + 1 : end], start + 2)
            blocks.append(block)
        i = end + 1
    return blocks


def _commands(lines: list[str], first_line: int) -> list[Command]:
    """Shell lines → commands (``\\`` continuations joined), each with the JSON comment right below it."""
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start, text = i, lines[i].rstrip()
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i].strip()
        command = Command(text, first_line + start)
        i += 1
        if i < len(lines) and re.match(r"^\s*#\s*[\[{]", lines[i]):
            documented = ""
            while i < len(lines) and lines[i].strip().startswith("#"):
                documented += lines[i].strip()[1:].strip()
                i += 1
                if _balanced(documented):
                    break
            command.expected_json = documented
        commands.append(command)
    return commands


def _balanced(text: str) -> bool:
    depth = 0
    for ch in re.sub(r'"(\\.|[^"\\])*"', '""', text):
        depth += ch in "[{"
        depth -= ch in "]}"
    return depth == 0


ANY, MORE = "⟨any value⟩", "⟨more items⟩"  # what the elisions become while parsing


def parse_documented(text: str) -> Any:
    """The README's JSON with its elisions: ``: …`` any value, ``, …]`` / ``[…]`` more items, ``, …}`` more keys."""
    text = re.sub(r":\s*…", f': "{ANY}"', text)
    text = re.sub(r",\s*…\s*\]", f', "{MORE}"]', text)
    text = re.sub(r"\[\s*…\s*\]", f'["{MORE}"]', text)
    text = re.sub(r",\s*…\s*}", "}", text)
    return json.loads(text)


def _decimals(number: float, raw: str) -> int:
    mantissa = raw.lower().split("e")[0]
    exponent = int(raw.lower().split("e")[1]) if "e" in raw.lower() else 0
    return max(0, len(mantissa.partition(".")[2]) - exponent)


def mismatches(documented: Any, actual: Any, where: str = "") -> list[str]:
    """What in the documented answer the actual one does not hold (fields and values)."""
    if documented == ANY:
        return []
    if isinstance(documented, dict):
        if not isinstance(actual, dict):
            return [f"{where or '.'}: expected an object, got {actual!r:.80}"]
        problems = []
        for key, value in documented.items():
            if key not in actual:
                problems.append(f"{where}.{key}: missing (the answer has {sorted(actual)})")
            else:
                problems += mismatches(value, actual[key], f"{where}.{key}")
        return problems
    if isinstance(documented, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {actual!r:.80}"]
        more = bool(documented) and documented[-1] == MORE
        items = documented[:-1] if more else documented
        if (len(actual) < len(items)) if more else (len(actual) != len(items)):
            return [f"{where}: {len(actual)} items, the README shows {len(items)}{' or more' if more else ''}"]
        return [p for i, item in enumerate(items) for p in mismatches(item, actual[i], f"{where}[{i}]")]
    if isinstance(documented, str) and documented.endswith("…"):
        ok = isinstance(actual, str) and actual.startswith(documented[:-1])
        return [] if ok else [f"{where}: {actual!r:.60} does not start with {documented[:-1]!r}"]
    if isinstance(documented, bool) or documented is None or isinstance(documented, str):
        return [] if documented == actual else [f"{where}: {actual!r:.80}, the README shows {documented!r}"]
    if isinstance(documented, int) and not isinstance(documented, bool):
        return [] if actual == documented else [f"{where}: {actual!r}, the README shows {documented}"]
    # a float: equal to the digits written (one unit of the last digit, for another CPU's rounding)
    raw = repr(documented)
    tolerance = 10 ** -_decimals(documented, raw)
    ok = isinstance(actual, (int, float)) and abs(actual - documented) <= tolerance
    return [] if ok else [f"{where}: {actual!r}, the README shows {documented} (±{tolerance:g})"]


ALL_BLOCKS = [block for document in DOCUMENTS for block in parse_blocks(document)]


def test_every_command_block_runs_or_says_why_not() -> None:
    """The rule this file enforces, checked on the documents themselves: an illustrative block gives a reason."""
    assert ALL_BLOCKS, "no command blocks found"
    for block in ALL_BLOCKS:
        if block.illustrative is not None:
            assert len(block.illustrative.split()) >= 3, f"{block.name}: say why it is illustrative"
        else:
            assert block.commands or block.language == "python", f"{block.name}: a command block with no command"
        for command in block.commands:
            if command.expected_json is not None:
                parse_documented(command.expected_json)  # the documented answers parse


# --- the run ---------------------------------------------------------------------------------------------------


@dataclass
class Walk:
    folder: Path  # where the commands run: the checkout's entries as links, plus what the commands made
    env: dict[str, str]
    url: str
    status_before: str
    grpc: str  # host:port of its gRPC service


def _git_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True
    ).stdout


def _mirror(folder: Path) -> None:
    """The checkout as a user has it, with links: every top-level entry git knows, and the environment."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in sorted({line.split("/")[0] for line in listed.splitlines() if line}):
        if (ROOT / name).exists():
            (folder / name).symlink_to(ROOT / name)
    # The environment `make` made, as links, with a stamp of its own: make then sees it installed and up to date
    # (a test must never reinstall it), whatever the checkout's pyproject.toml mtime is.
    venv = folder / ".venv"
    venv.mkdir()
    for entry in Path(sys.prefix).iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()


def _home_with_the_session_exports(home: Path, session_home: Path) -> None:
    """A fresh BENTOML_HOME holding the default set the session already exported (each version linked, so a
    README command that exports again adds a version here, not to the session's store); `make serve` exports
    whatever else the default set has."""
    from cnnserve.export import DEFAULT_EXPORTS

    for name, _ in DEFAULT_EXPORTS:
        source = session_home / "models" / name
        if not (source / "latest").is_file():
            continue
        target = home / "models" / name
        target.mkdir(parents=True)
        shutil.copy(source / "latest", target / "latest")
        for version in source.iterdir():
            if version.is_dir():
                (target / version.name).symlink_to(version)


@pytest.fixture(scope="module")
def walk(model_store: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    status_before = _git_status()
    folder = tmp_path_factory.mktemp("readme-walk")
    _mirror(folder)
    home = tmp_path_factory.mktemp("readme-bentoml")
    _home_with_the_session_exports(home, Path(os.environ["BENTOML_HOME"]))
    port = free_port()
    grpc_port = free_port()  # never Triton's 8001: other servers on this machine may hold it
    env = {**os.environ, "BENTOML_HOME": str(home), "PORT": str(port), "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(CNNSERVE_GRPC_PORT=str(grpc_port), CNNSERVE_GRPC_HOST="127.0.0.1")
    env.pop("CNNSERVE_MODELS", None)  # the README's server serves the store, as `make serve` does for a user
    log = folder.parent / "readme-serve.log"
    # The README's first block: `make serve` (with the environment installed already).
    process = subprocess.Popen(
        ["make", "serve", f"PORT={port}"],
        cwd=folder,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"make serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"make serve was not ready in 600 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield Walk(folder, env, url, status_before, f"127.0.0.1:{grpc_port}")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _localised(text: str, walk: Walk) -> str:
    """The documented addresses → the walk's server (its HTTP port and its gRPC port)."""
    text = text.replace(f"http://{DOCUMENTED_URL}", walk.url).replace(DOCUMENTED_URL, walk.url.removeprefix("http://"))
    return text.replace(DOCUMENTED_GRPC, walk.grpc)


def _run(walk: Walk, script: str, program: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        program, input=script, cwd=walk.folder, env=walk.env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(3600)  # a slow block (a benchmark, a bento build) on two shared cores
@pytest.mark.parametrize(
    "block",
    [
        pytest.param(block, id=block.name, marks=[pytest.mark.slow] if block.slow else [])
        for block in ALL_BLOCKS
        if block.illustrative is None
    ],
)
def test_documented_commands_run(walk: Walk, block: Block) -> None:
    if block.language == "python":
        done = _run(walk, _localised(block.source, walk), [str(walk.folder / ".venv/bin/python"), "-"], 300)
        assert done.returncode == 0, f"{block.name}: the Python block failed:\n{done.stderr[-3000:]}"
        return
    for command in block.commands:
        script = "set -o pipefail\n" + _localised(command.text, walk)
        done = _run(walk, script, ["bash"], 1800)
        where = f"{block.path.name}:{command.line}: {command.text}"
        assert done.returncode == 0, f"{where}\nexit {done.returncode}\n{done.stderr[-3000:]}{done.stdout[-1000:]}"
        if command.expected_json is not None:
            try:
                actual = json.loads(done.stdout)
            except json.JSONDecodeError:
                pytest.fail(f"{where}\nthe README shows JSON, the command printed:\n{done.stdout[:1000]}")
            problems = mismatches(parse_documented(command.expected_json), actual)
            assert not problems, f"{where}\n" + "\n".join(problems) + f"\nthe answer: {done.stdout[:3000]}"


def test_the_commands_left_the_checkout_clean(walk: Walk) -> None:
    """Nothing the documents tell a user to run changes a tracked file or leaves a file in the checkout."""
    assert _git_status() == walk.status_before


def test_the_settings_tables_list_every_setting() -> None:
    """The README's two tables (what an operator sets; the advanced block) hold every `CNNSERVE_*` setting, each
    once, and nothing that is not one."""
    from cnnserve.service.settings import Settings

    rows = re.findall(r"^\| `(CNNSERVE_[A-Z0-9_]+)` \|", (ROOT / "README.md").read_text(), re.M)
    assert len(rows) == len(set(rows)), "a setting is listed twice"
    assert set(rows) == {f"CNNSERVE_{name.upper()}" for name in Settings.model_fields}
