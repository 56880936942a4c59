"""The only code that imports sglang: NLD registered into an unmodified SGLang 0.5.23.

``register()`` is the entry point (group ``sglang.srt.plugins``) that SGLang calls in every
process. It is idempotent and self-checking: SGLang only logs plugin failures, so a wrong
SGLang version or a hook target that does not resolve raises here, and the algorithm refuses
to run if the hooks are not active. It registers
- the HF config class for ``model_type = nemotron_labs_diffusion``;
- the model class for architecture ``NemotronLabsDiffusionModel`` (overriding any in-tree one);
- the vision-language ``NemotronLabsDiffusionVLMModel``, its config and processor (``vlm.py``);
- the dLLM algorithm ``NemotronTriMode``;
- the attention backend ``nemotron`` (``--attention-backend nemotron``: the plugin's kernels);
- the hooks of ``hooks.py``, ``retraction.py``, ``surface.py``, ``prompt_logprobs.py``,
  ``metrics.py`` (canvas rounds reported, and their load published, as decode steps) and
  ``vlm.py`` (the image rule), and on the CPU platform ``platform.CPU_HOOKS``.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

SGLANG_VERSION = "0.5.23"
_registered = False


def _check_version() -> None:
    from importlib.metadata import version

    found = version("sglang")
    if found != SGLANG_VERSION:
        raise RuntimeError(f"nemotron-sglang supports sglang=={SGLANG_VERSION} only; "
                           f"found {found}")


def register() -> None:
    global _registered
    if _registered:
        return
    _check_version()
    import pkgutil

    from sglang.srt.dllm import algorithm as algorithms
    from sglang.srt.models.registry import ModelRegistry
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from transformers import AutoConfig

    from . import attention_backend, hooks, metrics, prompt_logprobs, retraction, surface, vlm
    from .algorithm import NemotronTriMode
    from .hf_config import NemotronLabsDiffusionConfig
    from ..core.config import ARCHITECTURE
    from ..core.modes import ALGORITHM_NAME
    from .model import NemotronLabsDiffusionForSGLang

    AutoConfig.register(NemotronLabsDiffusionConfig.model_type, NemotronLabsDiffusionConfig,
                        exist_ok=True)
    ModelRegistry.models[ARCHITECTURE] = NemotronLabsDiffusionForSGLang
    algorithms.algo_name_to_cls[ALGORITHM_NAME] = NemotronTriMode
    attention_backend.register()
    vlm.register()
    plan = [(hooks.DLLM_CONFIG_TARGET, hooks.dllm_config_from_server_args, HookType.AROUND),
            (hooks.TP_WORKER_TARGET, hooks.attach_requests, HookType.AROUND),
            (hooks.STASH_TARGET, hooks.keep_canvas_kv, HookType.AROUND),
            (retraction.SCHEDULE_TARGET, retraction.schedule_with_retraction, HookType.AROUND),
            (retraction.ABORT_TARGET, retraction.abort_parked, HookType.AFTER),
            (hooks.INIT_TARGET, hooks.cap_running_requests, HookType.AROUND),
            (prompt_logprobs.TARGET, prompt_logprobs.keep_prompt_logprobs, HookType.AROUND),
            (metrics.REPORT_TARGET, metrics.report_canvas_round, HookType.AROUND),
            (metrics.PUBLISH_TARGET, metrics.publish_canvas_load, HookType.AROUND),
            *[(t, surface.copy_top_level_fields, HookType.AFTER)
              for t in surface.CONVERT_TARGETS],
            (surface.TOKENIZE_TARGET, surface.check_tokenized, HookType.AFTER),
            (vlm.TOKENIZE_ONE_TARGET, vlm.check_images, HookType.AROUND),
            (surface.STREAM_TARGET, surface.export_stats, HookType.BEFORE),
            (surface.USAGE_TARGET, surface.add_usage, HookType.AFTER),
            (surface.STREAM_USAGE_TARGET, surface.add_streaming_usage, HookType.AFTER),
            (surface.GENERATE_TARGET, surface.track_stream_meta, HookType.AROUND)]
    from . import platform

    if platform.activate() is not None:        # the CPU platform: fill SGLang's CPU gaps
        plan += [(target, fn, HookType.AROUND) for target, fn in platform.CPU_HOOKS]
    for target, fn, kind in plan:
        pkgutil.resolve_name(target)          # raises if SGLang moved it
        HookRegistry.register(target, fn, kind)
    # what the hooks call on SGLang's objects
    for used in hooks.CALLED + retraction.CALLED + prompt_logprobs.CALLED + metrics.CALLED:
        pkgutil.resolve_name(used)
    surface.allow_usage_extras()
    if algorithms.get_algorithm_cls(ALGORITHM_NAME) is not NemotronTriMode:
        raise RuntimeError("NemotronTriMode did not register")
    _registered = True
    logger.info("nemotron-sglang: registered %s, %s and its hooks", ARCHITECTURE,
                ALGORITHM_NAME)
