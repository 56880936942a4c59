"""The tri-mode server's settings: the algorithm's YAML (``--dllm-algorithm-config``) as one
frozen object, read once and checked here, for a YAML ``nemotron-sglang serve`` wrote and one
written by hand alike (``serve`` builds the object and writes ``to_yaml()``; the plugin reads it
with ``from_mapping``). A bad value is a ``RuleError`` naming its key.

    key               value                                            default
    algorithm         NemotronTriMode (optional)
    default_mode      a serving mode (core/modes.py)                   linear_spec
    threshold         in [0, 1]                                        0.9
    block_size        a power of two (at most the checkpoint's:        the checkpoint's
                      checked where the checkpoint is read)
    auto_max_batch    an int >= 1 (auto without a cost table)          8
    cost_model        a cost table (block_policy.CostTable)            none
    lora_path         a drafting-adapter directory, or none / off      the checkpoint's own
    custom_attention  a name; the kernels check it (kernels.choose_attention)   by device
    step_graphs       a name; the plugin checks it (off | cuda | emulate)       off
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from .block_policy import CostTable
from .modes import (ALGORITHM_NAME, DEFAULT_MODE, DEFAULT_THRESHOLD, RuleError,
                    check_block_length, check_mode, check_threshold)

AUTO_MAX_BATCH = 8          # auto's switch point without a cost table, unless set


@dataclass(frozen=True)
class ServerSettings:
    """The algorithm's settings (module docstring); ``__post_init__`` checks every value."""

    default_mode: str = DEFAULT_MODE
    threshold: float = DEFAULT_THRESHOLD
    block_size: int | None = None
    auto_max_batch: int = AUTO_MAX_BATCH
    cost_model: Mapping[str, Any] | None = None
    lora_path: str | None = None
    custom_attention: str | None = None
    step_graphs: str = "off"

    def __post_init__(self):
        for key, check in (("default_mode", check_mode), ("threshold", check_threshold)):
            try:
                check(getattr(self, key))
            except RuleError as e:
                raise RuleError(key, e.message) from None
        if self.block_size is not None:
            check_block_length(self.block_size, field="block_size")
        if isinstance(self.auto_max_batch, bool) or not isinstance(self.auto_max_batch, int) \
                or self.auto_max_batch < 1:
            raise RuleError("auto_max_batch", f"must be an integer >= 1, got "
                                              f"{self.auto_max_batch!r}")
        try:
            self.cost_table()
        except (TypeError, ValueError) as e:
            raise RuleError("cost_model", str(e)) from None
        for key in ("lora_path", "custom_attention", "step_graphs"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise RuleError(key, f"must be a name or a path, got {value!r}")

    def cost_table(self) -> CostTable | None:
        """``cost_model`` as core's ``CostTable`` (None without one)."""
        return None if self.cost_model is None else CostTable.from_mapping(self.cost_model)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "ServerSettings":
        """The settings of a parsed YAML mapping (None: the defaults); an unknown key is refused.
        YAML's spellings are normalised: ``lora_path: false`` is ``"off"``, ``step_graphs:
        false`` is ``"off"``, a threshold may be an int."""
        data = dict(data or {})
        if data.get("algorithm", ALGORITHM_NAME) != ALGORITHM_NAME:
            raise RuleError("algorithm", f"this YAML is {ALGORITHM_NAME}'s, not "
                                         f"{data['algorithm']!r}'s")
        data.pop("algorithm", None)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise RuleError("algorithm config", f"unknown keys {sorted(unknown)}; known: "
                                                f"{sorted(known)}")
        if data.get("lora_path") is False:
            data["lora_path"] = "off"
        if data.get("step_graphs") in (False, None):
            data.pop("step_graphs", None)
        if isinstance(data.get("threshold"), int) and not isinstance(data["threshold"], bool):
            data["threshold"] = float(data["threshold"])
        return cls(**data)

    def to_yaml(self) -> str:
        """The YAML of every setting that is not None (a plain name bare, anything else as
        JSON, which is YAML); ``from_mapping`` of its parse gives these settings back."""
        def text(v):
            return v if isinstance(v, str) and re.fullmatch(r"[A-Za-z_][\w./-]*", v) \
                else json.dumps(v)
        return "".join(f"{k}: {text(v)}\n" for k, v in asdict(self).items() if v is not None)
