"""The CPU platform class itself (imported by SGLang only after ``platform.activate`` chose it)."""

from __future__ import annotations

from sglang.srt.platforms.cpu import CpuSRTPlatform
from sglang.srt.platforms.device_mixin import PlatformEnum


class NemotronCpuPlatform(CpuSRTPlatform):
    _enum = PlatformEnum.OOT          # out-of-tree: fused ops use their forward_native paths
    device_name = "cpu"
    device_type = "cpu"

    def get_dispatch_key_name(self) -> str:
        return "native"

    def get_default_attention_backend(self) -> str:
        return "torch_native"
