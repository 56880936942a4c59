"""Host syncs of a real server's canvas steps: ``probe_env(folder, log)`` is the environment
that makes a server launched with it (SGLang spawns its scheduler as a new interpreter) append
one JSON line to ``log`` per canvas step (``CanvasRound._step``: building the pass, the custom
pass with the model's forward and attention, the decisions) and per canvas round
(``NemotronTriMode.run``, its steps included), each with its ``host_reads.HostReads`` reads and
uploads, through a ``sitecustomize`` written to ``folder`` (no product code changes);
``probe_server`` starts such a server, ``measure`` runs each mode and a mixed batch through it,
``step_stats`` sums a log up per step."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch

from ..core.modes import ALGORITHM_NAME, DECODE_MODES
from .host_reads import HostReads

LOG_ENV = "NEMOTRON_SGLANG_HOST_SYNCS_LOG"
SITECUSTOMIZE = f'''
import os
if os.environ.get("{LOG_ENV}"):
    from nemotron_sglang.testing.host_sync_probe import install_probe
    install_probe()
'''


def probe_env(folder: Path, log: Path) -> dict[str, str]:
    """The environment of a server whose canvas steps and rounds are counted into ``log``."""
    (Path(folder) / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, LOG_ENV: str(log)}


def _write(record: dict) -> None:
    with open(os.environ[LOG_ENV], "a") as f:
        f.write(json.dumps(record) + "\n")


def _patch(module) -> None:
    """Counts ``NemotronTriMode.run`` (canvas rounds) and ``CanvasRound._step``."""
    algo, canvas = module.NemotronTriMode, module.CanvasRound
    run, step = algo.run, canvas._step

    def counted_run(self, model_runner, forward_batch, *a, **k):
        if not forward_batch.forward_mode.is_dllm_extend():
            return run(self, model_runner, forward_batch, *a, **k)
        with HostReads() as reads:
            out = run(self, model_runner, forward_batch, *a, **k)
        _write({"kind": "round", "rows": int(forward_batch.batch_size),
                "reads": [list(r) for r in reads.reads],
                "uploads": [list(r) for r in reads.uploads]})
        return out

    def counted_step(self, members):
        with HostReads() as reads:
            out = step(self, members)
        _write({"kind": "step", "modes": [row.nld.stats.mode for row, _ in members],
                "tokens": sum(len(p.token_ids) for _, p in members),
                "reads": [list(r) for r in reads.reads],
                "uploads": [list(r) for r in reads.uploads]})
        return out

    algo.run, canvas._step = counted_run, counted_step


def install_probe() -> None:
    """Patches the plugin's algorithm module right after it is first imported."""
    import importlib.abc
    import importlib.machinery

    target = "nemotron_sglang.sglang_plugin.algorithm"

    class After(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target_=None):
            if name != target:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                _patch(module)
            spec.loader.exec_module = exec_module      # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, After())


def read_log(log: Path, skip: int = 0) -> list[dict]:
    """The probe's records of ``log`` after its first ``skip`` lines."""
    if not Path(log).exists():
        return []
    return [json.loads(line) for line in Path(log).read_text().splitlines()[skip:]]


def step_stats(records: list[dict]) -> dict:
    """Over the canvas steps and rounds of ``records``: steps, rounds; per step the reads (max
    and mean), their elements, by op and by call site (means), the uploads (max and mean) and
    their ops; per round the reads outside its steps (mean)."""
    steps = [r for r in records if r["kind"] == "step"]
    rounds = [r for r in records if r["kind"] == "round"]
    n = max(len(steps), 1)
    per = [len(s["reads"]) for s in steps]
    up = [len(s["uploads"]) for s in steps]
    mean = lambda c: {k: v / n for k, v in c.most_common()}            # noqa: E731
    outside = sum(len(r["reads"]) for r in rounds) - sum(per)
    return {"steps": len(steps), "rounds": len(rounds),
            "max_reads": max(per, default=0), "reads": sum(per) / n,
            "elements": sum(e for s in steps for _, e, _ in s["reads"]) / n,
            "ops": mean(Counter(op for s in steps for op, _, _ in s["reads"])),
            "sites": mean(Counter(site for s in steps for _, _, site in s["reads"])),
            "max_uploads": max(up, default=0), "uploads": sum(up) / n,
            "upload_sites": mean(Counter(site for s in steps for _, _, site in s["uploads"])),
            "round_outside_steps": outside / max(len(rounds), 1)}


MODES = DECODE_MODES


def probe_server(model: Path, block: int, folder: Path, log: Path, port: int | None = None):
    """A tri-mode ``CPUServer`` of ``model`` at ``block`` whose canvas steps are counted into
    ``log``; its custom passes run the Triton attention (the default on CUDA; interpreted on a
    CPU, where the interpreter's own copies are not counted)."""
    from .cpu_server import CPUServer

    yaml = Path(folder) / "tri_mode.yaml"
    yaml.write_text(f"default_mode: ar\nblock_size: {block}\ncustom_attention: triton\n")
    env = probe_env(folder, log)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    return CPUServer(model, Path(folder) / "server.log",
                     ["--dllm-algorithm", ALGORITHM_NAME, "--dllm-algorithm-config", str(yaml),
                      "--max-total-tokens", "8192", "--max-running-requests", "8"],
                     env=env, port=port)


def measure(server, log: Path, prompts: list[list[int]], max_new: int,
            batch: int = 2) -> dict[str, dict]:
    """``step_stats`` of each mode's canvas steps on a server started with ``probe_env(.., log)``:
    per mode ``batch`` greedy requests of that mode in one call, then "mixed" (one request of
    each mode in one call); prompts taken in turn from ``prompts``; ``ignore_eos``, so every
    request runs ``max_new`` tokens whatever the weights answer (an EOS as the first token would
    leave no canvas step to count)."""
    out = {}
    for label in (*MODES, "mixed"):
        modes = list(MODES) if label == "mixed" else [label] * batch
        skip = len(read_log(log))
        server.post_json("/generate", {
            "input_ids": [prompts[k % len(prompts)] for k in range(len(modes))],
            "sampling_params": [{"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True,
                                 "custom_params": {"decode_mode": m}} for m in modes]})
        out[label] = step_stats(read_log(log, skip))
    return out
