"""The plugin as SGLang sees it: entry points, ``load_plugins`` in a fresh process, the
``DllmConfig`` hook on a real ``ServerArgs``, the version gate and the opt-in CPU platform.

Importing sglang costs ~10-20 s, so every check that needs it runs in one of a few fresh
interpreters (module-scoped fixtures) and reports JSON; the tests assert on parts of it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from nemotron_sglang.core.weights import write_tiny_checkpoint

pytestmark = pytest.mark.skipif(importlib.util.find_spec("sglang") is None,
                                reason="sglang not installed")

PLUGIN_GROUP = "sglang.srt.plugins"
PLATFORM_GROUP = "sglang.srt.platforms"
DLLM_TARGET = "sglang.srt.dllm.config.DllmConfig.from_server_args"
TP_TARGET = "sglang.srt.managers.tp_worker.TpModelWorker._forward_batch_generation_dllm"
CPU_PLATFORM = "nemotron_sglang.sglang_plugin.cpu_platform.NemotronCpuPlatform"
RESULT_MARK = "NLD-TEST-RESULT:"
# variables that would change which plugins / platform a fresh process picks
_PLUGIN_ENV = ("SGLANG_PLUGINS", "SGLANG_PLATFORM", "SGLANG_USE_CPU_ENGINE",
               "NEMOTRON_SGLANG_CPU_PLATFORM", "SGLANG_EXTERNAL_MODEL_PACKAGE")


def run_python(code: str, *args, env: dict | None = None, timeout: float = 180):
    """Run ``code`` in a fresh interpreter; it reports one line ``RESULT_MARK + json``.

    Returns ``(parsed json or None, CompletedProcess)``. The caller's plugin-selection
    variables are dropped, so the child sees SGLang's defaults plus ``env``.
    """
    child_env = {k: v for k, v in os.environ.items() if k not in _PLUGIN_ENV}
    child_env["OMP_NUM_THREADS"] = "1"
    child_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", code, RESULT_MARK, *map(str, args)],
                          env=child_env, capture_output=True, text=True, timeout=timeout)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
    return result, proc


# No conftest.py in tests/sglang: sibling modules import helpers with ``from conftest import``
# from tests/conftest.py, which a second conftest module here would shadow.
@pytest.fixture(scope="module")
def nld_tiny(tmp_path_factory):
    """Tiny NLD checkpoint (block_size 4, mask 100) with the drafting LoRA."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("nld") / "tiny", seed=0, with_lora=True)


@pytest.fixture(scope="module")
def nld_tiny_b8(tmp_path_factory):
    """Tiny NLD checkpoint with block_size 8 (tells the checkpoint apart from any default)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("nld_b8") / "tiny", seed=0,
                                 block_size=8)


# ---- (a) entry points ------------------------------------------------------------------------
def _ep(group, name):
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    assert len(found) == 1, f"{group}:{name} found {len(found)} times"
    return found[0]


def test_plugin_entry_point():
    ep = _ep(PLUGIN_GROUP, "nemotron_sglang")
    assert ep.value == "nemotron_sglang.sglang_plugin:register"
    assert ep.dist is not None and ep.dist.name.replace("_", "-") == "nemotron-sglang"
    import nemotron_sglang.sglang_plugin as plugin

    assert ep.load() is plugin.register


def test_platform_entry_point():
    ep = _ep(PLATFORM_GROUP, "nemotron_cpu")
    assert ep.value == "nemotron_sglang.sglang_plugin.platform:activate"
    from nemotron_sglang.sglang_plugin import platform

    assert ep.load() is platform.activate


# ---- (b) + (c) one fresh process: load_plugins, then the DllmConfig hook -----------------------
LOADED_SCRIPT = r'''
import json, sys, traceback
mark, tiny, tiny_b8, ydir = sys.argv[1:5]
out = {}

from sglang.srt.plugins import load_plugins
load_plugins()

import nemotron_sglang.sglang_plugin as plugin
from nemotron_sglang.sglang_plugin import hooks
from nemotron_sglang.sglang_plugin.algorithm import NemotronTriMode
from nemotron_sglang.sglang_plugin.model import NemotronLabsDiffusionForSGLang
from sglang.srt.dllm import algorithm as algos
from sglang.srt.dllm.config import DllmConfig
from sglang.srt.managers.tp_worker import TpModelWorker
from sglang.srt.models.registry import ModelRegistry
from sglang.srt.plugins.hook_registry import HookRegistry

DLLM_TARGET, TP_TARGET = hooks.DLLM_CONFIG_TARGET, hooks.TP_WORKER_TARGET
out["targets"] = [DLLM_TARGET, TP_TARGET]
out["registered_flag"] = plugin._registered

def qual(obj):
    return None if obj is None else f"{obj.__module__}.{obj.__qualname__}"

# (b) model and algorithm registries
out["model_cls"] = qual(ModelRegistry.models.get("NemotronLabsDiffusionModel"))
out["model_is_ours"] = ModelRegistry.models.get("NemotronLabsDiffusionModel") is \
    NemotronLabsDiffusionForSGLang
out["algo_in_dict"] = algos.algo_name_to_cls.get("NemotronTriMode") is NemotronTriMode
out["algo_resolved"] = qual(algos.get_algorithm_cls("NemotronTriMode"))
out["algo_resolved_is_ours"] = algos.get_algorithm_cls("NemotronTriMode") is NemotronTriMode

# (b) attention backend: a CLI choice and a registry factory
from nemotron_sglang.sglang_plugin import attention_backend as nab
from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES
from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
out["backend_choice"] = "nemotron" in ATTENTION_BACKEND_CHOICES
out["backend_factory_is_ours"] = ATTENTION_BACKENDS.get("nemotron") is nab.create_backend
out["backend_in_algorithm"] = "nemotron" in NemotronTriMode.supported_attention_backends

# (b) hooks: the attribute on the class is an AROUND wrapper over the original, closing over ours
def hook_state(owner, name, hook_fn):
    raw = owner.__dict__[name]
    fn = raw.__func__ if isinstance(raw, staticmethod) else raw
    inner = getattr(fn, "__wrapped__", None)
    cells = [c.cell_contents for c in (fn.__closure__ or ())]
    return {"staticmethod": isinstance(raw, staticmethod),
            "wrapped": inner is not None and inner is not fn,
            "inner_module": getattr(inner, "__module__", None),
            "closes_over_hook": any(c is hook_fn for c in cells),
            "closes_over_inner": any(c is inner for c in cells) and inner is not None,
            "id": id(fn)}

out["dllm_hook"] = hook_state(DllmConfig, "from_server_args", hooks.dllm_config_from_server_args)
out["tp_hook"] = hook_state(TpModelWorker, "_forward_batch_generation_dllm",
                            hooks.attach_requests)
out["patched"] = sorted(t for t in out["targets"] if t in HookRegistry._patched)
out["hook_counts_1"] = {t: len(HookRegistry._hooks.get(t, [])) for t in out["targets"]}

# (b) the TP-worker hook is live: calling the patched method hands batch.reqs to forward_batch
class FB: pass
class Algo:
    fdfo = False
    def run(self, model_runner, forward_batch, algo_states):
        self.seen = getattr(forward_batch, "nld_reqs", None)
        return None, [], None, None, False
class Worker:
    model_runner = None
    dllm_algorithm = Algo()
reqs = ["req-a", "req-b"]
batch = type("Batch", (), {"reqs": reqs})()
w = Worker()
try:
    TpModelWorker._forward_batch_generation_dllm(w, FB(), batch)
    out["tp_hook_call"] = {"seen": w.dllm_algorithm.seen}
except Exception as e:
    out["tp_hook_call"] = {"error": f"{type(e).__name__}: {e}"}

# (b) transformers resolves model_type nemotron_labs_diffusion to the plugin's config class
from transformers import AutoConfig
hf = AutoConfig.from_pretrained(tiny)
out["hf_config_cls"] = qual(type(hf))
out["hf_mask_token_id"] = getattr(hf, "mask_token_id", None)

# (b) register() again is a no-op; so is another apply_hooks()
plugin.register()
HookRegistry.apply_hooks()
out["hook_counts_2"] = {t: len(HookRegistry._hooks.get(t, [])) for t in out["targets"]}
out["dllm_hook_id_2"] = hook_state(DllmConfig, "from_server_args",
                                   hooks.dllm_config_from_server_args)["id"]
out["tp_hook_id_2"] = hook_state(TpModelWorker, "_forward_batch_generation_dllm",
                                 hooks.attach_requests)["id"]

# (c) DllmConfig.from_server_args on real ServerArgs
from sglang.srt.server_args import ServerArgs

def server_args(model_path, **kw):
    base = dict(model_path=model_path, dllm_algorithm="NemotronTriMode", device="cpu",
                max_total_tokens=4096, attention_backend="torch_native")
    base.update(kw)
    return ServerArgs(**base)

def yaml_file(name, text):
    path = f"{ydir}/{name}.yaml"
    with open(path, "w") as f:
        f.write(text)
    return path

def dllm(sa):
    try:
        c = DllmConfig.from_server_args(sa)
    except Exception as e:
        return {"error": type(e).__name__, "message": str(e)}
    if c is None:
        return {"none": True}
    return {"cls": qual(type(c)), "is_dllm_config": isinstance(c, DllmConfig),
            "algorithm": c.algorithm, "block_size": c.block_size,
            "block_size_type": type(c.block_size).__name__, "mask_id": c.mask_id,
            "fdfo": c.first_done_first_out_mode,
            "separate_context": c.requires_separate_context_encoding,
            "algorithm_config": c.algorithm_config,
            "max_running_requests": c.max_running_requests}

sa_plain = server_args(tiny_b8)
out["serverargs_dllm_fdfo"] = sa_plain.dllm_fdfo
out["c_default"] = dllm(sa_plain)
out["c_yaml4"] = dllm(server_args(tiny_b8, dllm_algorithm_config=yaml_file("b4", "block_size: 4\n")))
out["c_yaml8_extra"] = dllm(server_args(tiny_b8, dllm_algorithm_config=yaml_file(
    "b8", "block_size: 8\ndefault_mode: diffusion\nthreshold: 0.75\n")))
out["c_max_running"] = dllm(server_args(tiny_b8, max_running_requests=3))
out["c_tiny4"] = dllm(server_args(tiny))
for name, text in [("yaml16", "block_size: 16\n"), ("yaml6", "block_size: 6\n"),
                   ("yaml0", "block_size: 0\n"), ("yamlneg", "block_size: -8\n"),
                   ("yamlfloat", "block_size: 4.0\n"), ("yamltrue", "block_size: true\n"),
                   ("yamllist", "- 4\n")]:
    out["c_" + name] = dllm(server_args(tiny_b8, dllm_algorithm_config=yaml_file(name, text)))
out["c_lowconf"] = dllm(server_args(tiny_b8, dllm_algorithm="LowConfidence"))
out["c_no_algo"] = dllm(server_args(tiny_b8, dllm_algorithm=None))

print(mark + json.dumps(out))
'''


@pytest.fixture(scope="module")
def loaded(nld_tiny, nld_tiny_b8, tmp_path_factory):
    ydir = tmp_path_factory.mktemp("yaml")
    result, proc = run_python(LOADED_SCRIPT, nld_tiny, nld_tiny_b8, ydir)
    assert proc.returncode == 0 and result is not None, \
        f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    return result


def test_load_plugins_ran_register(loaded):
    assert loaded["registered_flag"] is True


def test_model_registered(loaded):
    assert loaded["model_cls"] == ("nemotron_sglang.sglang_plugin.model."
                                   "NemotronLabsDiffusionForSGLang")
    assert loaded["model_is_ours"] is True


def test_algorithm_registered(loaded):
    assert loaded["algo_in_dict"] is True
    assert loaded["algo_resolved"] == "nemotron_sglang.sglang_plugin.algorithm.NemotronTriMode"
    assert loaded["algo_resolved_is_ours"] is True


def test_attention_backend_registered(loaded):
    assert loaded["backend_choice"] is True
    assert loaded["backend_factory_is_ours"] is True
    assert loaded["backend_in_algorithm"] is True


def test_hook_targets_are_the_expected_ones(loaded):
    assert loaded["targets"] == [DLLM_TARGET, TP_TARGET]


@pytest.mark.parametrize("key,inner_module", [("dllm_hook", "sglang.srt.dllm.config"),
                                              ("tp_hook", "sglang.srt.managers.tp_worker")])
def test_hooks_applied(loaded, key, inner_module):
    h = loaded[key]
    assert h["wrapped"] is True, h                    # no longer the original function
    assert h["inner_module"] == inner_module, h       # ... and wraps SGLang's own
    assert h["closes_over_hook"] is True, h           # ... with our hook around it
    assert h["closes_over_inner"] is True, h
    assert sorted(loaded["patched"]) == sorted([DLLM_TARGET, TP_TARGET])


def test_dllm_hook_keeps_staticmethod(loaded):
    assert loaded["dllm_hook"]["staticmethod"] is True
    assert loaded["tp_hook"]["staticmethod"] is False


def test_tp_worker_hook_hands_reqs_to_the_algorithm(loaded):
    assert loaded["tp_hook_call"] == {"seen": ["req-a", "req-b"]}


def test_autoconfig_resolves_plugin_config(loaded):
    assert loaded["hf_config_cls"] == ("nemotron_sglang.sglang_plugin.hf_config."
                                       "NemotronLabsDiffusionConfig")
    assert loaded["hf_mask_token_id"] == 100


def test_register_twice_is_a_noop(loaded):
    assert loaded["hook_counts_1"] == {DLLM_TARGET: 1, TP_TARGET: 1}
    assert loaded["hook_counts_2"] == {DLLM_TARGET: 1, TP_TARGET: 1}
    assert loaded["dllm_hook_id_2"] == loaded["dllm_hook"]["id"]
    assert loaded["tp_hook_id_2"] == loaded["tp_hook"]["id"]


# ---- (c) DllmConfig from a real ServerArgs ---------------------------------------------------
def test_dllm_config_from_checkpoint(loaded, nld_tiny_b8):
    assert loaded["serverargs_dllm_fdfo"] is True      # SGLang's default; the hook overrides it
    c = loaded["c_default"]
    assert "error" not in c, c
    # SGLang's DllmConfig, as the plugin's subclass that holds the server's request defaults
    assert c["is_dllm_config"] and c["cls"] == \
        "nemotron_sglang.sglang_plugin.server_config.TriModeConfig"
    assert c["algorithm"] == "NemotronTriMode"
    assert c["block_size"] == 8 and c["block_size_type"] == "int"
    assert c["mask_id"] == 100
    assert c["fdfo"] is False
    assert c["separate_context"] is True
    assert c["algorithm_config"] == {"model_path": str(nld_tiny_b8)}
    assert c["max_running_requests"] == 1     # hooks.UNSET_CAP until the scheduler derives it


def test_dllm_config_block_from_other_checkpoint(loaded):
    c = loaded["c_tiny4"]
    assert c["block_size"] == 4 and c["mask_id"] == 100


def test_dllm_config_max_running_requests_from_server_args(loaded):
    assert loaded["c_max_running"]["max_running_requests"] == 3


def test_dllm_config_yaml_lowers_block(loaded, nld_tiny_b8):
    c = loaded["c_yaml4"]
    assert "error" not in c, c
    assert c["block_size"] == 4 and c["mask_id"] == 100 and c["fdfo"] is False
    assert c["algorithm_config"] == {"block_size": 4, "model_path": str(nld_tiny_b8)}


def test_dllm_config_yaml_other_keys_reach_algorithm(loaded, nld_tiny_b8):
    c = loaded["c_yaml8_extra"]
    assert c["block_size"] == 8
    assert c["algorithm_config"] == {"block_size": 8, "default_mode": "diffusion",
                                     "threshold": 0.75, "model_path": str(nld_tiny_b8)}


@pytest.mark.parametrize("case", ["yaml16", "yaml6", "yaml0", "yamlneg", "yamlfloat"])
def test_dllm_config_yaml_bad_block_refused(loaded, case):
    c = loaded["c_" + case]
    assert c.get("error") == "ValueError", c
    assert "block_size" in c["message"]
    if case == "yaml16":
        assert "8" in c["message"]                    # names the checkpoint's block size


def test_dllm_config_yaml_bool_block_refused(loaded):
    c = loaded["c_yamltrue"]
    assert c.get("error") == "ValueError", c


def test_dllm_config_yaml_not_a_mapping_refused(loaded):
    c = loaded["c_yamllist"]
    assert c.get("error") == "ValueError" and "mapping" in c["message"], c


def test_dllm_config_other_algorithm_refused(loaded):
    c = loaded["c_lowconf"]
    assert c.get("error") == "ValueError", c
    assert "NemotronTriMode" in c["message"] and "LowConfidence" in c["message"]


def test_dllm_config_without_algorithm_is_none(loaded):
    assert loaded["c_no_algo"] == {"none": True}


# ---- (d) the version gate --------------------------------------------------------------------
VERSION_SCRIPT = r'''
import importlib.metadata, json, sys
mark = sys.argv[1]
real = importlib.metadata.version
importlib.metadata.version = lambda name: "0.5.22" if name == "sglang" else real(name)
import nemotron_sglang.sglang_plugin as plugin
out = {"real": real("sglang")}
try:
    plugin.register()
    out["error"] = None
except Exception as e:
    out["error"] = type(e).__name__
    out["message"] = str(e)
out["registered_flag"] = plugin._registered
out["sglang_dllm_imported"] = "sglang.srt.dllm.algorithm" in sys.modules
print(mark + json.dumps(out))
'''


def test_register_refuses_other_sglang_version():
    result, proc = run_python(VERSION_SCRIPT, timeout=120)
    assert result is not None, proc.stderr[-4000:]
    assert result["real"] == "0.5.23"
    assert result["error"] == "RuntimeError", result
    assert "0.5.23" in result["message"] and "0.5.22" in result["message"]
    assert result["registered_flag"] is False
    assert result["sglang_dllm_imported"] is False     # refused before touching SGLang


# ---- (e) the opt-in CPU platform -------------------------------------------------------------
def test_activate_off_without_env(monkeypatch):
    from nemotron_sglang.sglang_plugin import platform

    monkeypatch.delenv(platform.ENV, raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert platform.activate() is None


@pytest.mark.parametrize("value", ["0", "", "true", "yes"])
def test_activate_off_unless_env_is_1(monkeypatch, value):
    from nemotron_sglang.sglang_plugin import platform

    monkeypatch.setenv(platform.ENV, value)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert platform.activate() is None


def test_activate_on_cpu_host(monkeypatch):
    import torch

    from nemotron_sglang.sglang_plugin import platform

    monkeypatch.setenv(platform.ENV, "1")
    if torch.cuda.is_available():                    # this test is about a CPU-only host
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert platform.activate() == CPU_PLATFORM


def test_activate_never_takes_a_cuda_host(monkeypatch):
    from nemotron_sglang.sglang_plugin import platform

    monkeypatch.setenv(platform.ENV, "1")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert platform.activate() is None


PLATFORM_SCRIPT = r'''
import json, sys
mark = sys.argv[1]
from sglang.srt.platforms import current_platform
cls = type(current_platform)
print(mark + json.dumps({"cls": f"{cls.__module__}.{cls.__qualname__}",
                         "oot": current_platform.is_out_of_tree(),
                         "device_type": getattr(current_platform, "device_type", None),
                         "attn": current_platform.get_default_attention_backend()}))
'''


@pytest.mark.skipif("__import__('torch').cuda.is_available()",
                    reason="the CPU platform stays off on a CUDA host")
def test_current_platform_is_ours_when_opted_in():
    result, proc = run_python(PLATFORM_SCRIPT, env={"NEMOTRON_SGLANG_CPU_PLATFORM": "1"})
    assert proc.returncode == 0 and result is not None, proc.stderr[-4000:]
    assert result["cls"] == CPU_PLATFORM
    assert result["oot"] is True
    assert result["device_type"] == "cpu"
    assert result["attn"] == "torch_native"


# ---- (e) every change to SGLang is checked ----------------------------------------------------
CHANGES_SCRIPT = r'''
import json, sys
mark = sys.argv[1]
import nemotron_sglang.sglang_plugin as plugin
from nemotron_sglang.sglang_plugin import changes
real = changes.entries
out = {}
if sys.argv[2] == "broken":             # a table SGLang no longer reads: the change cannot hold
    changes.entries = lambda: [*real(), changes.Entry("a vanished table", lambda: None,
                                                      lambda: False)]
try:
    plugin.register()
    out["error"] = None
    out["held"] = [e.what for e in real() if e.holds()]
    out["all"] = [e.what for e in real()]
except Exception as e:
    out["error"] = str(e)
out["registered_flag"] = plugin._registered
print(mark + json.dumps(out))
'''


def test_every_change_to_sglang_holds_after_register():
    result, proc = run_python(CHANGES_SCRIPT, "ok", timeout=180)
    assert result is not None, proc.stderr[-4000:]
    assert result["error"] is None and result["registered_flag"], result
    assert result["held"] == result["all"] and len(result["all"]) >= 10, result


def test_a_change_that_does_not_take_stops_registration():
    result, proc = run_python(CHANGES_SCRIPT, "broken", timeout=180)
    assert result is not None, proc.stderr[-4000:]
    assert "did not take" in result["error"] and "a vanished table" in result["error"], result
    assert result["registered_flag"] is False
