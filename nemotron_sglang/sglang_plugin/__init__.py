"""The only code that imports sglang: NLD registered into an unmodified SGLang 0.5.23.

``register()`` is the entry point (group ``sglang.srt.plugins``) that SGLang calls in every
process. It is idempotent and self-checking: SGLang only logs plugin failures, so a wrong
SGLang version or a hook target that does not resolve raises here, and the algorithm refuses
to run if the hooks are not active. Everything it changes in SGLang is listed in ``changes.py``, one screen: the registry entries
(configs, model classes, the dLLM algorithm ``NemotronTriMode``, the attention backend
``nemotron``, the multimodal tables, the OpenAI usage models), each checked after it is applied,
and the hooks, each target resolved before it is registered.
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

    from sglang.srt.plugins.hook_registry import HookRegistry

    from . import changes, platform

    made = changes.entries()
    for entry in made:
        entry.apply()
    plan = changes.hook_plan(cpu_platform=platform.activate() is not None)
    for target, fn, kind in plan:
        pkgutil.resolve_name(target)          # raises if SGLang moved it
        HookRegistry.register(target, fn, kind)
    for used in changes.called():             # what the hooks call on SGLang's objects
        pkgutil.resolve_name(used)
    missing = [entry.what for entry in made if not entry.holds()]
    if missing:
        raise RuntimeError(f"nemotron-sglang: these changes to SGLang did not take: {missing}")
    _registered = True
    logger.info("nemotron-sglang: registered %d entries and %d hooks (changes.py)", len(made),
                len(plan))
