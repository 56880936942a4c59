"""The decode modes and the rules on a request's decode parameters: the one place of both.

- ``DECODE_MODES``: what core decodes; ``core.decoding`` registers one strategy per name and
  fails at import if the two lists differ.
- ``SELF_SPEC_MODES``: the self-speculative ones (at T = 0 they emit greedy ``ar``'s tokens);
  ``DEFAULT_MODE``: what a server decodes a request in that names none; ``DEFAULT_THRESHOLD``:
  the confidence threshold when none is set.
- ``AUTO``: the serving policy over them (linear_spec at the block the load allows, or ar;
  ``block_policy.py``); ``SERVING_MODES`` = what a request (or a server default) may name.
- ``MODE_ONLY`` / ``check_applies`` / ``check_mode_fields``: the per-request fields only some
  modes can honour (``max_steps``: diffusion's step budget; ``canvas`` / ``suffix``: infill,
  which only a mode that sees the right side can do), the check that a request's mode is one of
  them, and that none comes with a grammar (``NOT_WITH_GRAMMAR`` says why).
- ``check_mode`` / ``check_threshold`` / ``check_block_length`` / ``check_max_steps`` /
  ``check_thinking_budget``: each parameter's rule, raising
  :class:`RuleError` that names the field. The CLI, ``DecodeParams``, the server's flags and
  the SGLang adapter all call these; none restates a rule.

Pure Python (no torch), so the command-line tools import it cheaply.
"""

from __future__ import annotations

import math

DECODE_MODES: tuple[str, ...] = ("ar", "diffusion", "linear_spec", "quadratic_spec")
SELF_SPEC_MODES: tuple[str, ...] = ("linear_spec", "quadratic_spec")   # emit greedy AR's tokens
AUTO = "auto"
SERVING_MODES: tuple[str, ...] = DECODE_MODES + (AUTO,)
DEFAULT_MODE = "linear_spec"       # a server's default_mode unless configured
# the one algorithm that serves every mode, by the name SGLang's --dllm-algorithm knows it
ALGORITHM_NAME = "NemotronTriMode"
DEFAULT_THRESHOLD = 0.9            # diffusion's confidence threshold unless a request sets one
# a request field -> the modes that honour it (any other mode refuses it; ``auto`` picks ar or
# linear_spec, so it refuses these too)
MODE_ONLY: dict[str, tuple[str, ...]] = {"max_steps": ("diffusion",), "canvas": ("diffusion",),
                                         "suffix": ("diffusion",)}
INFILL_GRAMMAR = ("infill cannot be constrained by a grammar (it describes left-to-right text); "
                  "drop the canvas / suffix or the grammar")
STEP_BUDGET_GRAMMAR = ("a step budget cannot be kept under a grammar (a refused slot waits for a "
                       "later pass); drop max_steps or the grammar")
# why each MODE_ONLY field cannot be kept together with a grammar
NOT_WITH_GRAMMAR: dict[str, str] = {"max_steps": STEP_BUDGET_GRAMMAR, "canvas": INFILL_GRAMMAR,
                                    "suffix": INFILL_GRAMMAR}


class RuleError(ValueError):
    """A parameter that breaks its rule (a decode parameter here, a sampling one in
    ``decoding/processors.py``); ``field`` names it, ``message`` says why. The one such error:
    the SGLang adapter's ``ParamError`` is this class."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def is_power_of_two(n) -> bool:
    """True for the ints 1, 2, 4, ... (bools and non-ints are not)."""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


def check_mode(mode, modes: tuple[str, ...] = SERVING_MODES) -> str:
    if not isinstance(mode, str) or mode not in modes:
        raise RuleError("decode_mode", f"unknown decode mode {mode!r}; choose one of "
                                            f"{', '.join(modes)}")
    return mode


def check_threshold(t) -> float:
    """A confidence in [0, 1]: 0 commits the whole block in one pass, 1 one slot per pass (the
    most confident; a slot at confidence exactly 1 also commits)."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or \
            not 0.0 <= t <= 1.0:
        raise RuleError("threshold", f"must be a number in [0, 1], got {t!r}")
    return float(t)


def check_block_length(b, limit: int | None = None, of: str = "the block size",
                       field: str = "block_length") -> int:
    """A power of two, at most ``limit`` (``of``: whose block that is) when given."""
    if not is_power_of_two(b):
        raise RuleError(field, f"must be a power of two, got {b!r}")
    if limit is not None and b > limit:
        raise RuleError(field, f"{b} exceeds {of} {limit}")
    return b


def check_max_steps(k) -> int:
    """Diffusion's step budget: at most ``k`` >= 1 denoise passes per block, the last of them
    committing every slot still masked (``diffusion.py``)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise RuleError("max_steps", f"must be an integer >= 1, got {k!r}")
    return k


def check_applies(field: str, mode: str) -> None:
    """``field`` (a key of ``MODE_ONLY``) is set on a request decoded in ``mode``."""
    modes = MODE_ONLY[field]
    if mode not in modes:
        raise RuleError(field, f"only decode_mode {' / '.join(modes)} has it, not {mode}")


def check_mode_fields(mode: str, fields, grammar: bool = False) -> None:
    """Each ``MODE_ONLY`` field a request sets (``fields``: their names) applies in ``mode``,
    and none of them comes with a grammar. The one check of both: core's decoder and the
    server's request parser call it."""
    for field in fields:
        check_applies(field, mode)
        if grammar:
            raise RuleError(field, f"{NOT_WITH_GRAMMAR[field]} (decode_mode {mode})")


def check_thinking_budget(n) -> int:
    """A thinking budget: after ``n`` >= 0 tokens inside the reasoning section the next token
    is its end (``</think>``)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise RuleError("thinking_budget", f"must be an integer >= 0, got {n!r}")
    return n


def check_canvas(canvas, block: int | None = None, vocab: int | None = None,
                 field: str = "canvas") -> tuple:
    """An infill region: 1..``block`` token ids (the mask id where the model fills, any other id
    kept as given), each in the vocabulary when ``vocab`` is known; ``block`` None: the length
    is checked later, against the block the request decodes at. ``field`` names it (a
    ``suffix`` is a canvas of masks followed by the suffix)."""
    if not isinstance(canvas, (list, tuple)) or not canvas or \
            not all(isinstance(t, int) and not isinstance(t, bool) for t in canvas):
        raise RuleError(field, "must be a non-empty list of token ids")
    if block is not None and len(canvas) > block:
        raise RuleError(field, f"{len(canvas)} tokens do not fit the block of {block} "
                               f"(block_length); at most {block}")
    if vocab is not None and not all(0 <= t < vocab for t in canvas):
        raise RuleError(field, f"token ids outside the vocabulary [0, {vocab})")
    return tuple(canvas)


def infill_canvas(suffix, block: int, max_new_tokens: int, mask_id: int) -> tuple[tuple, int]:
    """The canvas of a ``suffix`` request and how many of its tokens are output: a gap of masks
    as long as the block leaves (at most ``max_new_tokens``), then the suffix, kept as given."""
    suffix = tuple(suffix)
    if len(suffix) >= block:
        raise RuleError("suffix", f"{len(suffix)} tokens leave no gap in the block of {block} "
                                  f"(block_length); at most {block - 1}")
    gap = max(1, min(max_new_tokens, block - len(suffix)))
    return (mask_id,) * gap + suffix, gap

