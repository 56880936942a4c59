"""Shared fixtures: tiny NLD checkpoints generated once per session, models in float64; the
session's random seed (fresh per run, ``NLD_TEST_SEED`` pins it) seeds ``random`` and torch for
every test from (seed, test id), and a failing test's report names the line that replays it.

In CI (``CI`` in 1/true/yes) nothing skips silently: a missing test dependency fails the session
at its start, and any skip or xfail whose reason is not in ``ALLOWED_SKIPS`` (or whose condition
does not hold on this machine) turns into a failure naming the test and the reason — at run time
and at collection (a module-level ``pytest.importorskip``, even of a missing transitive import)."""

from __future__ import annotations

import importlib.util
import os
import random

import pytest
import torch

from nemotron_sglang.core.kv_cache import PagedKVCache
from nemotron_sglang.core.weights import load_model, write_tiny_checkpoint

torch.set_num_threads(1)

# what the test modules import or skip without; CI installs all of them (scripts/install.sh)
TEST_DEPENDENCIES = ("sglang", "triton", "openai", "jinja2", "scipy", "ruff", "mypy", "xgrammar",
                     "transformers", "PIL", "smg", "dynamo")


def _no_cuda() -> bool:
    return not torch.cuda.is_available()


# the only skips a CI run accepts: the reason exactly as the skip states it -> a check, made when
# the skip happens, that the reason is true on this machine. Every other skip (and every xfail)
# fails a CI run; tests/test_ci.py checks that each entry is still used by some test.
ALLOWED_SKIPS = {
    # GPU-only (@pytest.mark.gpu): real-shape bf16 Triton kernels, KV write (tests/kernels)
    "needs a CUDA device": _no_cuda,
    # GPU-only (@pytest.mark.gpu): the image resize on CUDA against transformers (test_images)
    "needs CUDA": _no_cuda,
    # GPU host only: SGLang's CUDA platform wins there, so ours stays off (sglang/test_registration)
    "the CPU platform stays off on a CUDA host": torch.cuda.is_available,
    # GPU host only: with flashinfer installed its missing-package error cannot be raised
    # (kernels/test_kernels_package; benchmarks/kernels.py runs that path instead)
    "flashinfer is installed; benchmarks/kernels.py exercises its path":
        lambda: importlib.util.find_spec("flashinfer") is not None,
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_reason(rep) -> str | None:
    """The reason of a skipped or xfailed (test or collect) report; None when it did not skip."""
    if not rep.skipped:
        return None
    if hasattr(rep, "wasxfail"):
        return f"xfail: {rep.wasxfail}"
    msg = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    return msg.removeprefix("Skipped: ")


def enforce_skip_policy(rep, nodeid: str) -> None:
    """In CI, turn ``rep`` into a failure when it skipped for a reason ``ALLOWED_SKIPS`` lacks or
    whose condition is false here."""
    reason = skip_reason(rep)
    if reason is None or not in_ci():
        return
    allowed = ALLOWED_SKIPS.get(reason)
    if allowed is not None and allowed():
        return
    why = "is not in ALLOWED_SKIPS" if allowed is None else "is false on this machine"
    if hasattr(rep, "wasxfail"):
        del rep.wasxfail
    rep.outcome = "failed"
    rep.longrepr = (f"CI: {nodeid} skipped: {reason!r}; that reason {why} (tests/conftest.py), "
                    f"and in CI no other skip is allowed")


# one seed per session; each test draws from random / torch seeded by (SEED, its node id), so a
# test's draws do not depend on which tests ran before it and a failure replays alone
SEED = int(os.environ.get("NLD_TEST_SEED") or random.SystemRandom().randrange(1 << 30))
# TRITON_INTERPRET as the session found it, before any test module's import sets it: the modules
# that interpret Triton on CPU set it at import (collection) and restore this value after their
# tests, so the servers of later tests never inherit it
TRITON_INTERPRET_AT_START = os.environ.get("TRITON_INTERPRET")
if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
    # Triton decorates its own library (``triton.language``'s @jit helpers, e.g. reductions) for
    # the interpreter or not when it is first imported; a kernel interpreted later can only call
    # interpreted helpers. On a CPU every in-process kernel runs interpreted, so the library is
    # imported under the interpreter here, whatever module (SGLang's) would import it first;
    # the variable itself is set only while a kernel module's tests run (below), so servers the
    # tests start never inherit it.
    os.environ["TRITON_INTERPRET"] = "1"
    import triton.language  # noqa: E402,F401
    if TRITON_INTERPRET_AT_START is None:
        os.environ.pop("TRITON_INTERPRET")
    else:
        os.environ["TRITON_INTERPRET"] = TRITON_INTERPRET_AT_START


@pytest.fixture(scope="module")
def restore_triton_interpret():
    """TRITON_INTERPRET=1 (without CUDA) while a module that runs Triton kernels on CPU runs
    (a kernel module imported lazily by one of its tests is decorated for the interpreter), and
    as the session found it afterwards (kernels once decorated stay interpreted); such a module
    uses it with ``pytestmark = pytest.mark.usefixtures("restore_triton_interpret")``."""
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    yield
    if TRITON_INTERPRET_AT_START is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = TRITON_INTERPRET_AT_START


def seed_of(nodeid: str) -> int:
    """The integer seed of one test: a stable function of (SEED, node id), not of ``hash()``."""
    return random.Random(f"{SEED}:{nodeid}").randrange(1 << 62)


@pytest.fixture(autouse=True)
def _seeded(request):
    s = seed_of(request.node.nodeid)
    random.seed(s)
    torch.manual_seed(s)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    enforce_skip_policy(rep, item.nodeid)
    if rep.failed:
        rep.sections.append(("random seed", f"replay: NLD_TEST_SEED={SEED} python -m pytest "
                                            f"'{item.nodeid}'"))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    enforce_skip_policy(outcome.get_result(), collector.nodeid or str(collector.path))


def pytest_report_header(config):
    return f"NLD_TEST_SEED={SEED} (fresh per run unless set)"


def missing_modules(names) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def pytest_sessionstart(session):
    """In CI (``CI`` set) a missing test dependency fails the run instead of skipping modules."""
    if in_ci():
        missing = missing_modules(TEST_DEPENDENCIES)
        if missing:
            raise pytest.UsageError(f"CI: test dependencies {missing} are not installed; in CI a "
                                    f"missing dependency fails the run (scripts/install.sh "
                                    f"installs them)")


@pytest.fixture(scope="session")
def ckpt_dirs(tmp_path_factory):
    """name -> checkpoint dir: seeds 0..2, block sizes 4 / 8, with and without LoRA."""
    root = tmp_path_factory.mktemp("ckpts")
    specs = {"s0_lora": dict(seed=0, with_lora=True), "s1_b8": dict(seed=1, block_size=8),
             "s2_lora": dict(seed=2, with_lora=True)}
    return {name: write_tiny_checkpoint(root / name, **kw) for name, kw in specs.items()}


@pytest.fixture(scope="session")
def model64(ckpt_dirs):
    return load_model(ckpt_dirs["s0_lora"], dtype=torch.float64)


def new_cache(model, num_pages=256, page_size=4, shuffle_seed=None) -> PagedKVCache:
    c = model.config
    return PagedKVCache(num_layers=c.num_hidden_layers, num_kv_heads=c.num_key_value_heads,
                        head_dim=c.head_dim, num_pages=num_pages, page_size=page_size,
                        dtype=model.dtype, shuffle_seed=shuffle_seed)


def random_prompts(n: int, seed: int, vocab: int, lo: int = 1, hi: int = 16,
                   avoid: tuple[int, ...] = (100,)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        ids = torch.randint(0, vocab, (length,), generator=g).tolist()
        out.append([t if t not in avoid else t + 1 for t in ids])
    return out
