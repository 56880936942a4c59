"""``nemotron-sglang serve`` argument building (no SGLang needed): defaults per machine kind,
pass-through flags win, bad input refused."""

from __future__ import annotations

import argparse

import pytest

from nemotron_sglang.serving import serve


def args(**kw):
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    ns = p.parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def value(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def test_cpu_defaults(tmp_path, monkeypatch, ckpt_dirs):
    monkeypatch.setenv("NEMOTRON_SGLANG_CACHE", str(tmp_path))
    cmd, env = serve.build_command(args(model=str(ckpt_dirs["s0_lora"])), [], cuda=False)
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    assert value(cmd, "--dllm-algorithm") == "NemotronTriMode"
    assert value(cmd, "--device") == "cpu" and value(cmd, "--attention-backend") == "torch_native"
    assert value(cmd, "--dtype") == "float32" and "--enable-metrics" in cmd
    assert env["NEMOTRON_SGLANG_CPU_PLATFORM"] == "1"
    # no running-request cap: the plugin derives it from the KV pool (core/limits.py)
    assert not any(a.startswith("--max-running-requests") for a in cmd)
    yaml = (tmp_path / value(cmd, "--dllm-algorithm-config").split("/")[-1]).read_text()
    assert "default_mode: linear_spec" in yaml and "threshold: 0.9" in yaml
    assert f"auto_max_batch: {serve.AUTO_MAX_BATCH['cpu']}" in yaml


def _yaml(cmd):
    from pathlib import Path
    return Path(value(cmd, "--dllm-algorithm-config")).read_text()


def test_auto_max_batch_per_device_and_flag(tmp_path, monkeypatch, ckpt_dirs):
    monkeypatch.setenv("NEMOTRON_SGLANG_CACHE", str(tmp_path))
    model = str(ckpt_dirs["s0_lora"])
    gpu, _ = serve.build_command(args(model=model), [], cuda=True)
    assert f"auto_max_batch: {serve.AUTO_MAX_BATCH['cuda']}" in _yaml(gpu)
    mine, _ = serve.build_command(args(model=model, auto_max_batch=3), [], cuda=False)
    assert "auto_max_batch: 3" in _yaml(mine)
    assert "auto_max_batch: 64" in _yaml(serve.build_command(args(model=model), [], cuda=False)[0])
    with pytest.raises(ValueError, match="auto-max-batch"):
        serve.main(args(auto_max_batch=0), [])


def test_cuda_defaults_and_passthrough_wins(tmp_path, monkeypatch, ckpt_dirs):
    monkeypatch.setenv("NEMOTRON_SGLANG_CACHE", str(tmp_path))
    monkeypatch.delenv("NEMOTRON_SGLANG_CPU_PLATFORM", raising=False)
    bare, _ = serve.build_command(args(model=str(ckpt_dirs["s0_lora"])), [], cuda=True)
    assert not any(a.startswith("--max-running-requests") for a in bare)
    cmd, env = serve.build_command(args(model=str(ckpt_dirs["s0_lora"]), default_mode="ar"),
                                   ["--max-running-requests", "4", "--tp-size", "2"], cuda=True)
    assert value(cmd, "--attention-backend") == "triton" and "--device" not in cmd
    assert cmd.count("--max-running-requests") == 1 and value(cmd, "--max-running-requests") == "4"
    assert cmd[-2:] == ["--tp-size", "2"]
    assert "NEMOTRON_SGLANG_CPU_PLATFORM" not in env
    assert "--disable-cuda-graph" not in cmd


@pytest.mark.parametrize("form", [["--attention-backend", "nemotron"],
                                  ["--attention-backend=nemotron"]])
def test_nemotron_backend_on_cuda_turns_graphs_off(tmp_path, monkeypatch, ckpt_dirs, form):
    monkeypatch.setenv("NEMOTRON_SGLANG_CACHE", str(tmp_path))
    cmd, _ = serve.build_command(args(model=str(ckpt_dirs["s0_lora"])), form, cuda=True)
    assert "--disable-cuda-graph" in cmd and cmd[-len(form):] == form
    assert sum(a.startswith("--attention-backend") for a in cmd) == 1
    cpu, _ = serve.build_command(args(model=str(ckpt_dirs["s0_lora"])), form, cuda=False)
    assert "--disable-cuda-graph" not in cpu


def test_default_model_is_the_shipped_fixture_and_bad_input_refused(tmp_path, monkeypatch):
    """No --model: the package's trained fixture; without it a clear error, never a random
    checkpoint in its place."""
    monkeypatch.setenv("NEMOTRON_SGLANG_CACHE", str(tmp_path))
    cmd, _ = serve.build_command(args(), [], cuda=False)
    assert value(cmd, "--model-path") == str(serve.FIXTURE)
    assert (serve.FIXTURE / "linear_spec_lora" / "adapter_config.json").exists()
    monkeypatch.setattr(serve, "FIXTURE", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="embedded default"):
        serve.build_command(args(), [], cuda=False)
    with pytest.raises(ValueError, match="config.json"):
        serve.build_command(args(model=str(tmp_path / "nowhere")), [], cuda=False)
    with pytest.raises(ValueError, match="threshold"):
        serve.main(args(threshold=1.5), [])


def test_cost_table_ships_for_the_embedded_default_on_cpu(tmp_path, monkeypatch, ckpt_dirs):
    """The adaptive block: serving the embedded default on a CPU passes the shipped cost table;
    another model or CUDA gets none unless --cost-model names one; a bad table is refused."""
    import json

    from nemotron_sglang.core.block_policy import CostTable

    monkeypatch.setenv("NEMOTRON_SGLANG_CACHE", str(tmp_path))
    shipped = json.loads(serve.CPU_COST_TABLE.read_text())
    CostTable.from_mapping(shipped)                         # the shipped table is valid
    cpu, _ = serve.build_command(args(), [], cuda=False)
    line = next(ln for ln in _yaml(cpu).splitlines() if ln.startswith("cost_model: "))
    assert json.loads(line[len("cost_model: "):])["ms"] == shipped["ms"]
    other = str(ckpt_dirs["s0_lora"])
    assert "cost_model" not in _yaml(serve.build_command(args(model=other), [], cuda=False)[0])
    assert "cost_model" not in _yaml(serve.build_command(args(), [], cuda=True)[0])
    mine = tmp_path / "table.json"
    mine.write_text(json.dumps({"rows": [1, 2], "blocks": [1, 2], "ms": [[1, 2], [2, 3]]}))
    gpu, _ = serve.build_command(args(model=other, cost_model=str(mine)), [], cuda=True)
    assert '"ms": [[1.0, 2.0], [2.0, 3.0]]' in _yaml(gpu)
    mine.write_text(json.dumps({"rows": [1], "blocks": [1]}))
    with pytest.raises(ValueError, match="--cost-model .*missing key 'ms'"):
        serve.build_command(args(model=other, cost_model=str(mine)), [], cuda=True)


def test_launch_script_is_serve(tmp_path):
    """``launch/serve_cpu.sh`` runs ``nemotron-sglang serve``: the same SGLang line, flags and
    KV pool (no second set of launch defaults)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NEMOTRON_SGLANG_CACHE=str(tmp_path), PYTHON=sys.executable)

    def exec_line(argv, **extra):
        out = subprocess.run(argv, env=dict(env, **extra), capture_output=True, text=True,
                             check=True, cwd=tmp_path).stdout
        return [ln for ln in out.splitlines() if ln.strip().startswith("exec:")]

    want = exec_line([sys.executable, "-m", "nemotron_sglang", "serve", "--port", "30123",
                      "--dry-run"])
    assert len(want) == 1
    assert exec_line(["bash", str(root / "launch" / "serve_cpu.sh"), "", "30123"],
                     SGLANG_ARGS="--dry-run") == want
    got = exec_line(["bash", str(root / "launch" / "serve_cpu.sh"), str(serve.FIXTURE), "30123"],
                    SGLANG_ARGS="--dry-run --max-running-requests 3")
    assert "--max-running-requests 3" in got[0] and got[0].count("--max-running-requests") == 1
    assert "--max-running-requests" not in want[0]


def test_strict_thinking_turns_the_budget_filter_on(tmp_path, monkeypatch, ckpt_dirs):
    """SGLang enforces a request's thinking budget only with a server default >= 0: serve sets
    one no request reaches, unless the caller set their own."""
    monkeypatch.setenv("NEMOTRON_SGLANG_CACHE", str(tmp_path))
    monkeypatch.delenv("SGLANG_MAX_THINK_TOKENS", raising=False)
    _, env = serve.build_command(args(model=str(ckpt_dirs["s0_lora"])), [], cuda=False)
    assert "SGLANG_MAX_THINK_TOKENS" not in env
    flags = ["--reasoning-parser", "nemotron_3", "--enable-strict-thinking"]
    cmd, env = serve.build_command(args(model=str(ckpt_dirs["s0_lora"])), flags, cuda=False)
    assert env["SGLANG_MAX_THINK_TOKENS"] == str(serve.NO_THINK_LIMIT) and cmd[-3:] == flags
    monkeypatch.setenv("SGLANG_MAX_THINK_TOKENS", "256")
    _, env = serve.build_command(args(model=str(ckpt_dirs["s0_lora"])), flags, cuda=False)
    assert env["SGLANG_MAX_THINK_TOKENS"] == "256"


def test_embedded_default_parses_tool_calls_and_reasoning(tmp_path, monkeypatch, ckpt_dirs):
    """The embedded default's template writes Mistral-style tool calls and a <think> section:
    serve passes the parsers that read them, unless given; another model gets none added."""
    monkeypatch.setenv("NEMOTRON_SGLANG_CACHE", str(tmp_path))
    cmd, _ = serve.build_command(args(), [], cuda=False)
    assert value(cmd, "--tool-call-parser") == "mistral"
    assert value(cmd, "--reasoning-parser") == "nemotron_3"
    cmd, _ = serve.build_command(args(), ["--tool-call-parser", "pythonic"], cuda=False)
    assert cmd.count("--tool-call-parser") == 1 and value(cmd, "--tool-call-parser") == "pythonic"
    cmd, _ = serve.build_command(args(model=str(ckpt_dirs["s0_lora"])), [], cuda=False)
    assert "--tool-call-parser" not in cmd and "--reasoning-parser" not in cmd
    out = serve.banner(args(), serve.build_command(args(), [], cuda=False)[0], cuda=False)
    assert serve.CHAT_EXAMPLE in out and "/v1/chat/completions" in out
