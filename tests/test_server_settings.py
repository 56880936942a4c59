"""core/server_settings.py: the algorithm's YAML read once, every key checked in one place, and
the same refusal whether serve wrote the YAML or a person did."""

from __future__ import annotations

import pytest
import yaml

from nemotron_sglang.core.modes import RuleError
from nemotron_sglang.core.server_settings import ServerSettings

TABLE = {"rows": [1, 2], "blocks": [1, 4], "ms": [[1.0, 2.0], [2.0, 3.0]]}


@pytest.mark.parametrize("key,value", [
    ("default_mode", "warp"), ("threshold", 1.5), ("threshold", "high"), ("block_size", 12),
    ("auto_max_batch", 0), ("auto_max_batch", 2.5), ("auto_max_batch", True),
    ("cost_model", {"rows": [1]}), ("lora_path", 3), ("custom_attention", ["triton"]),
])
def test_a_bad_value_is_refused_naming_its_key(key, value):
    with pytest.raises(RuleError) as e:
        ServerSettings.from_mapping({key: value})
    assert e.value.field == key


def test_unknown_keys_and_another_algorithm_are_refused():
    with pytest.raises(RuleError, match="unknown keys.*'treshold'"):
        ServerSettings.from_mapping({"treshold": 0.5})
    with pytest.raises(RuleError, match="algorithm"):
        ServerSettings.from_mapping({"algorithm": "LowConfidence"})
    assert ServerSettings.from_mapping({"algorithm": "NemotronTriMode"}) == ServerSettings()


@pytest.mark.parametrize("settings", [
    ServerSettings(),
    ServerSettings(default_mode="auto", threshold=0.0, block_size=8, auto_max_batch=3,
                   cost_model=TABLE, lora_path="off", custom_attention="triton",
                   step_graphs="emulate"),
    ServerSettings(threshold=1.0, lora_path="/some/dir/linear_spec_lora", step_graphs="off"),
])
def test_what_serve_writes_reads_back_equal(settings):
    assert ServerSettings.from_mapping(yaml.safe_load(settings.to_yaml())) == settings


def test_yaml_spellings_are_normalised():
    s = ServerSettings.from_mapping(yaml.safe_load("threshold: 1\nlora_path: false\n"
                                                   "step_graphs: off\n"))
    assert (s.threshold, s.lora_path, s.step_graphs) == (1.0, "off", "off")


def test_a_hand_written_yaml_gets_serves_refusal():
    """The plugin's config (what SGLang builds from --dllm-algorithm-config) refuses what
    ``serve --auto-max-batch 0`` refuses, naming the same key."""
    pytest.importorskip("sglang")
    from nemotron_sglang.serving import serve
    from nemotron_sglang.sglang_plugin.server_config import TriModeConfig

    with pytest.raises(ValueError, match="auto-max-batch"):
        serve.settings("linear_spec", 0.9, 0, None)
    with pytest.raises(ValueError, match="NemotronTriMode YAML auto_max_batch: must be"):
        TriModeConfig(algorithm="NemotronTriMode", algorithm_config={"auto_max_batch": 0},
                      block_size=32, mask_id=100, max_running_requests=8,
                      first_done_first_out_mode=False, requires_separate_context_encoding=True)
