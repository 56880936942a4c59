"""``nemotron-sglang serve``: a thin launcher for SGLang's own server with NLD's tri-mode algorithm.

It only builds ``python -m sglang.launch_server`` arguments and environment, then replaces this
process with SGLang's (no HTTP server of its own):
- the model: ``--model`` or the embedded default, the trained fixture shipped inside the package
  (``nemotron_sglang/data/nld-tiny-rules``);
- ``--dllm-algorithm NemotronTriMode`` with a YAML written from ``--default-mode`` / ``--threshold``
  / ``--auto-max-batch`` (default per device, ``AUTO_MAX_BATCH``) / ``--cost-model`` (the
  adaptive block's cost table, JSON from ``benchmarks/cost_model.py``; default: the table
  measured for the embedded default on a CPU, ``cost_cpu.json``, when serving it on a CPU);
- on a machine without CUDA: the plugin's CPU platform (``NEMOTRON_SGLANG_CPU_PLATFORM=1``),
  ``--device cpu``, fp32, torch-native attention, one OpenMP thread per process (SGLang's
  processes share the cores; 1 thread measured ~7× faster than torch's default on 2 cores) and a
  KV pool sized for a small machine; on CUDA: the triton attention backend (with
  ``--attention-backend nemotron``, the plugin's own kernels: ``--disable-cuda-graph`` added);
- for the embedded default, ``--tool-call-parser mistral`` and ``--reasoning-parser nemotron_3``
  unless given (its template writes the Mistral family's tool calls and a ``<think>`` section);
- ``--enable-metrics`` unless given; no ``--max-running-requests``: the plugin derives the
  running-request cap from the device's memory (``core/limits.py``, logged at start-up), and a
  ``--max-running-requests`` passed here wins;
- with ``--enable-strict-thinking`` (per-request thinking budgets: ``thinking_budget``),
  ``SGLANG_MAX_THINK_TOKENS`` set to ``NO_THINK_LIMIT`` unless set: SGLang's reasoning wrapper
  only filters tokens (and so enforces a request's budget) when a server default is >= 0.
Every other flag goes to ``sglang.launch_server`` unchanged and wins over these defaults.

With ``--dynamo`` the same engine flags start an NVIDIA Dynamo worker instead of SGLang's HTTP
server: ``python -m nemotron_sglang.serving.dynamo_worker`` (Dynamo's SGLang worker with NLD's
per-request fields bridged; no ``--host`` / ``--port``: Dynamo's frontend serves HTTP and finds
the worker through its discovery backend, ``DYN_*`` variables, docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path

from ..data import EMBEDDED as FIXTURE

from ..core.modes import SERVING_MODES as MODES
from ..core.modes import ALGORITHM_NAME, DEFAULT_MODE, DEFAULT_THRESHOLD, RuleError
from ..core.server_settings import ServerSettings

# decode_mode "auto" speculates while a round holds <= auto_max_batch requests, then runs ar.
# CPU: measured on the embedded default (benchmarks/RESULTS.md, "auto crossover"): linear_spec
# out-served ar at every concurrency tried, 1..64, so there is no crossover below 64.
# CUDA: not measured (no GPU lent yet); 8 is DESIGN §6's estimate of where 32-token spec passes
# reach an H100's compute roof (the server logs it as unmeasured: auto_plan.switch_point_note).
# Measure a cost table (benchmarks/cost_model.py --json) and pass --cost-model.
AUTO_MAX_BATCH = {"cpu": 64, "cuda": 8}
# the adaptive block's cost table of the embedded default on a 2-core CPU (benchmarks/cost_model.py)
CPU_COST_TABLE = Path(__file__).with_name("cost_cpu.json")
# SGLANG_MAX_THINK_TOKENS under --enable-strict-thinking: a default budget no request reaches
NO_THINK_LIMIT = 1 << 30
DYNAMO_WORKER = "nemotron_sglang.serving.dynamo_worker"
SERVED_MODEL_NAME = "nld"     # --served-model-name unless given: /v1/models, a gateway's routing
# the embedded default's parsers (its chat template: the Mistral family's tool calls, a <think>
# reasoning section), unless given: tool calls and reasoning come back as OpenAI fields
EMBEDDED_PARSERS = (("--tool-call-parser", "mistral"), ("--reasoning-parser", "nemotron_3"))
CHAT_EXAMPLE = "What comes after 41?"     # the banner's and README's chat line


def embedded_model() -> Path:
    """The checkpoint served without ``--model``: the trained fixture shipped in the package
    (``nemotron_sglang/data``). Its absence is a broken install, not a reason to serve another
    model."""
    if not (FIXTURE / "config.json").exists():
        raise FileNotFoundError(f"the embedded default checkpoint is missing from the installed "
                                f"package ({FIXTURE}); reinstall nemotron-sglang or pass --model")
    return FIXTURE


def _has_flag(passthrough: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in passthrough)


def _flag(passthrough: list[str], flag: str) -> str | None:
    for i, a in enumerate(passthrough):
        if a == flag and i + 1 < len(passthrough):
            return passthrough[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _int_flag(passthrough: list[str], flag: str, default: int = 1) -> int:
    value = _flag(passthrough, flag)
    return default if value is None else int(value)


def cpu_groups(world: int) -> str:
    """``SGLANG_CPU_OMP_THREADS_BIND`` value: the usable cores split into ``world`` groups."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    if len(cores) < world:
        raise ValueError(f"{world} CPU ranks need at least {world} cores, have {len(cores)}")
    per = len(cores) // world
    groups = [cores[r * per:(r + 1) * per] for r in range(world)]
    return "|".join(",".join(map(str, g)) for g in groups)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def cost_table(path: str | os.PathLike | None, model: Path, cuda: bool) -> dict | None:
    """The cost table to serve with: ``path``, else the CPU table of the embedded default when
    that model is served on a CPU, else None (auto then uses ``auto_max_batch``)."""
    if path is None:
        if cuda or model.resolve() != embedded_model().resolve() or not CPU_COST_TABLE.exists():
            return None
        path = CPU_COST_TABLE
    from ..core.block_policy import CostTable

    try:
        data = json.loads(Path(path).read_text())
        return CostTable.from_mapping(data).to_mapping()
    except (OSError, json.JSONDecodeError, ValueError, TypeError) as e:
        raise ValueError(f"--cost-model {path}: {e}") from None


def write_yaml(settings: ServerSettings) -> Path:
    """``settings`` as the algorithm's YAML, in the cache folder, named by its content."""
    root = Path(os.environ.get("NEMOTRON_SGLANG_CACHE", Path.home() / ".cache" / "nemotron-sglang"))
    root.mkdir(parents=True, exist_ok=True)
    text = settings.to_yaml()
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    path = root / f"tri_mode-{settings.default_mode}-{digest}.yaml"
    path.write_text(text)
    return path


def settings(default_mode: str, threshold: float, auto_max_batch: int,
             cost_model: dict | None) -> ServerSettings:
    """serve's options as core's ``ServerSettings`` (checked there: a bad value is an error
    naming its flag)."""
    try:
        return ServerSettings(default_mode=default_mode, threshold=threshold,
                              auto_max_batch=auto_max_batch, cost_model=cost_model)
    except RuleError as e:
        raise ValueError(f"--{e.field.replace('_', '-')}: {e.message}") from None


def build_command(args: argparse.Namespace, passthrough: list[str], cuda: bool
                  ) -> tuple[list[str], dict[str, str]]:
    """The ``sglang.launch_server`` argv and environment for these options."""
    model = Path(args.model) if args.model else embedded_model()
    if not (model / "config.json").exists():
        raise ValueError(f"{model} has no config.json")
    auto = (AUTO_MAX_BATCH["cuda" if cuda else "cpu"] if args.auto_max_batch is None
            else args.auto_max_batch)
    yaml = write_yaml(settings(args.default_mode, args.threshold, auto,
                               cost_table(getattr(args, "cost_model", None), model, cuda)))
    if getattr(args, "dynamo", False):
        cmd = [sys.executable, "-m", DYNAMO_WORKER, "--model-path", str(model)]
    else:
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model),
               "--host", args.host, "--port", str(args.port)]
    cmd += ["--dllm-algorithm", ALGORITHM_NAME, "--dllm-algorithm-config", str(yaml)]
    env = dict(os.environ)
    if _has_flag(passthrough, "--enable-strict-thinking"):
        env.setdefault("SGLANG_MAX_THINK_TOKENS", str(NO_THINK_LIMIT))
    # "nld": the name the banner's curl line, the README and a gateway's routing use
    defaults: list[tuple[str, str | None]] = [("--enable-metrics", None),
                                              ("--served-model-name", SERVED_MODEL_NAME)]
    if not args.model and not getattr(args, "dynamo", False):   # Dynamo's frontend parses itself
        defaults += list(EMBEDDED_PARSERS)
    if cuda:
        defaults += [("--attention-backend", "triton")]
        if _flag(passthrough, "--attention-backend") == "nemotron":
            defaults += [("--disable-cuda-graph", None)]   # the nemotron backend has no graphs
    else:
        env["NEMOTRON_SGLANG_CPU_PLATFORM"] = "1"
        env.setdefault("OMP_NUM_THREADS", "1")
        world = _int_flag(passthrough, "--tp-size") * _int_flag(passthrough, "--dp-size")
        if world > 1 and "SGLANG_CPU_OMP_THREADS_BIND" not in env:
            # SGLang asserts one NUMA node per rank unless each rank gets a core group
            env["SGLANG_CPU_OMP_THREADS_BIND"] = cpu_groups(world)
        defaults += [("--device", "cpu"), ("--dtype", "float32"),
                     ("--attention-backend", "torch_native"), ("--max-total-tokens", "16384")]
    for flag, value in defaults:
        if not _has_flag(passthrough, flag):
            cmd += [flag] if value is None else [flag, value]
    return cmd + passthrough, env


def _curl(url: str, body: dict) -> str:
    """The banner's curl line: a JSON POST of ``body`` to ``url``."""
    return f"curl -s {url} -H 'Content-Type: application/json' -d '{json.dumps(body)}'"


def banner(args: argparse.Namespace, cmd: list[str], cuda: bool) -> str:
    from ..core.vlm_checkpoint import is_vlm_dir

    url = f"http://{args.host}:{args.port}"
    model = cmd[cmd.index("--model-path") + 1]
    prompt = {"model": SERVED_MODEL_NAME, "prompt": "The number after 41 is", "max_tokens": 16,
              "temperature": 0}
    curl = _curl(f"{url}/v1/completions", {**prompt, "decode_mode": args.default_mode})
    chat = _curl(f"{url}/v1/chat/completions", {
        "model": SERVED_MODEL_NAME, "messages": [{"role": "user", "content": CHAT_EXAMPLE}],
        "max_tokens": 16, "temperature": 0, "decode_mode": args.default_mode})
    if is_vlm_dir(model):                     # the vision-language model: an image chat
        curl = _curl(f"{url}/v1/chat/completions", {
            "model": SERVED_MODEL_NAME, "max_tokens": 16, "temperature": 0,
            "decode_mode": args.default_mode, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "/path/to/image.png"}},
                {"type": "text", "text": "What is in the image?"}]}]})
        chat = None
    if getattr(args, "dynamo", False):
        curl = _curl("http://127.0.0.1:8000/v1/completions", {
            **prompt, "nvext": {"annotations": [f"nld.decode_mode={args.default_mode}"]}})
        return "\n".join([
            f"nemotron-sglang serve --dynamo: a Dynamo worker ({'CUDA' if cuda else 'CPU'}), "
            f"model {SERVED_MODEL_NAME!r}; HTTP is Dynamo's frontend "
            f"(python -m dynamo.frontend --http-port 8000), docs/scale-out.md",
            f"  model: {model}",
            f"  modes: {', '.join(MODES)} per request (nvext.annotations nld.decode_mode=...), "
            f"default {args.default_mode}",
            f"  try:   {curl}",
            f"  exec:  {shlex.join(cmd)}",
        ])
    return "\n".join([
        f"nemotron-sglang serve: {url} ({'CUDA' if cuda else 'CPU'})",
        f"  model: {model}",
        f"  modes: {', '.join(MODES)} per request (decode_mode), default {args.default_mode}",
        f"  try:   {curl}",
        *([f"  chat:  {chat}"] if chat else []),
        f"  exec:  {shlex.join(cmd)}",
    ])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="NLD checkpoint dir (default: embedded tiny model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--default-mode", choices=MODES, default=DEFAULT_MODE)
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    p.add_argument("--auto-max-batch", type=int, default=None,
                   help="decode_mode auto: speculate up to this many requests per round "
                        f"(default {AUTO_MAX_BATCH['cpu']} on CPU, {AUTO_MAX_BATCH['cuda']} on CUDA)")
    p.add_argument("--cost-model", default=None,
                   help="decode_mode auto: the adaptive block's cost table (JSON, from "
                        "benchmarks/cost_model.py); default: the shipped CPU table when serving "
                        "the embedded default on a CPU")
    p.add_argument("--dynamo", action="store_true",
                   help="start an NVIDIA Dynamo worker (ai-dynamo 1.6.1) with these engine flags "
                        "instead of SGLang's HTTP server (docs/scale-out.md)")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")


def main(args: argparse.Namespace, passthrough: list[str]) -> int:
    # the flags are checked before the model is looked up or anything written
    settings(args.default_mode, args.threshold,
             1 if args.auto_max_batch is None else args.auto_max_batch, None)
    if args.dynamo and importlib.util.find_spec("dynamo") is None:
        raise ValueError("--dynamo needs NVIDIA Dynamo: ai-dynamo 1.6.1 (scripts/install.sh "
                         "installs it, requirements/dynamo.txt)")
    cuda = _cuda()
    cmd, env = build_command(args, passthrough, cuda)
    print(banner(args, cmd, cuda), flush=True)
    if args.dry_run:
        return 0
    os.execvpe(cmd[0], cmd, env)
    return 0  # unreachable
