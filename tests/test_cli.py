"""End-to-end tests of the ``nemotron-sglang`` command line, run as ``python -m nemotron_sglang``.

Every check is a real subprocess (torch import included, ~3 s each), so all ``generate`` calls
are launched together once per module, in parallel, and the tests only read their results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from nemotron_sglang.data import EMBEDDED as FIXTURE  # noqa: E402

MODES = ("ar", "diffusion", "linear_spec", "quadratic_spec")
PROMPT = ["--prompt-ids", "5,6,7,8", "--max-new-tokens", "12"]
CKPT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "linear_spec_lora/adapter_config.json", "linear_spec_lora/adapter_model.safetensors")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "nemotron_sglang", *args], env=full_env,
                          capture_output=True, text=True, timeout=180)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


ERRORS = {  # name -> (extra args, fragment expected on stderr)
    "unknown_mode": (["--mode", "bogus"], "invalid choice: 'bogus'"),
    "block_not_pow2": (["--block-length", "3"], "power of two"),
    "block_too_big": (["--block-length", "64"], "exceeds the model's block size 4"),
    "zero_tokens": (["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, object]:
    """Every CLI call of this module, run concurrently; name -> result.

    ``ckpt`` is (dir, make-tiny-checkpoint result); ``nolora`` the same checkpoint copied without
    its ``linear_spec_lora/`` (what make-tiny-checkpoint writes without --with-lora); ``default``
    is (cache dir, first call, second call, mtime of the cached weights after the first call).
    The ~3 s torch import of each call dominates, so calls are shared between checks.
    """
    root = tmp_path_factory.mktemp("cli")
    ckpt, nolora, cache = root / "tiny-s3", root / "tiny-s3-nolora", root / "cache"

    def default_model_twice():
        """No --model: both calls use the embedded default (the fixture); the second decodes a
        text prompt with its tokenizer."""
        env = {"NEMOTRON_SGLANG_CACHE": str(cache)}
        first = cli("generate", "--mode", "linear_spec", *PROMPT, "--json", env=env)
        weights = cache / "tiny-seed0" / "model.safetensors"
        stamp = weights.stat().st_mtime_ns if weights.exists() else None
        second = cli("generate", "--prompt", "hello world", "--max-new-tokens", "8", "--json",
                     env=env)
        return cache, first, second, stamp

    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        default = pool.submit(default_model_twice)
        made = cli("make-tiny-checkpoint", str(ckpt), "--seed", "3", "--with-lora")
        assert made.returncode == 0, made.stderr
        shutil.copytree(ckpt, nolora, ignore=shutil.ignore_patterns("linear_spec_lora"))

        model = ["--model", str(ckpt)]
        jobs = {f"mode:{m}": (*model, "--mode", m, *PROMPT, "--json") for m in MODES}
        jobs["no_lora"] = (*model, "--mode", "linear_spec", "--no-lora", *PROMPT, "--json")
        for name, (extra, _) in ERRORS.items():
            jobs[f"err:{name}"] = (*model, *PROMPT, *extra)
        jobs["err:missing_model"] = ("--model", str(root / "does-not-exist"), *PROMPT)
        jobs["err:lora_absent"] = ("--model", str(nolora), "--lora", *PROMPT)
        futures = {name: pool.submit(cli, "generate", *a) for name, a in jobs.items()}
        out = {name: f.result() for name, f in futures.items()}
        out["default"] = default.result()
    out["ckpt"] = (ckpt, made)
    return out


def test_make_tiny_checkpoint(runs):
    d, proc = runs["ckpt"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(d)
    for f in CKPT_FILES:
        assert (d / f).is_file(), f
    assert json.loads((d / "config.json").read_text())["block_size"] == 4


@pytest.mark.parametrize("mode", MODES)
def test_generate_json(runs, mode):
    out = last_json(runs[f"mode:{mode}"])
    ids = out["output_ids"]
    assert out["mode"] == mode
    assert isinstance(ids, list) and all(type(t) is int for t in ids) and 1 <= len(ids) <= 12
    assert type(out["forwards"]) is int and out["forwards"] > 0
    assert out["tokens_per_forward"] == round(len(ids) / out["forwards"], 4)
    assert out["finish_reason"] in {"stop", "length"}
    assert out["finish_reason"] == "stop" or len(ids) == 12
    if mode == "ar":
        assert out["acceptance_length"] is None
    assert out["lora"] is (mode == "linear_spec")


def test_self_speculation_is_lossless(runs):
    ar = last_json(runs["mode:ar"])["output_ids"]
    for name in ("mode:linear_spec", "mode:quadratic_spec", "no_lora"):
        assert last_json(runs[name])["output_ids"] == ar, name


def test_no_lora(runs):
    out = last_json(runs["no_lora"])
    assert out["mode"] == "linear_spec" and out["lora"] is False
    assert out["forwards"] > 0 and out["output_ids"]


def test_prompt_text_uses_checkpoint_tokenizer(runs):
    from nemotron_sglang.core.tokenizer import decode, load_tokenizer  # tokenizers only, no torch

    _, _, proc, _ = runs["default"]
    out = last_json(proc)
    assert 1 <= len(out["output_ids"]) <= 8
    assert isinstance(out["text"], str) and out["text"]
    assert out["text"] == decode(load_tokenizer(FIXTURE), out["output_ids"], skip_special=True)


@pytest.mark.parametrize("name", [*ERRORS, "missing_model", "lora_absent"])
def test_errors_exit_2_without_traceback(runs, name):
    proc = runs[f"err:{name}"]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert "error:" in proc.stderr
    fragment = {"missing_model": "does-not-exist", "lora_absent": "linear_spec_lora"}.get(name) \
        or ERRORS[name][1]
    assert fragment in proc.stderr, proc.stderr


def test_default_model_is_the_committed_fixture(runs):
    """With no --model, generate uses the trained fixture shipped in the package (its absence is
    an error, test_serve_args.py) and writes nothing to the cache."""
    cache, first, second, stamp = runs["default"]
    a = last_json(first)
    assert a["output_ids"] and a["lora"] is True   # the fixture carries the LoRA drafter
    assert last_json(second)["output_ids"]
    assert stamp is None and not (cache.exists() and any(cache.iterdir()))


def test_help_describes_the_command_in_whole_sentences():
    from nemotron_sglang.serving.cli import _parser

    text = " ".join(_parser().description.split())
    assert text.endswith(".") and "serve" in text and "--dynamo" in text, text
