"""Which implementation the ``nemotron`` attention backend picks (no server needed); the backend
itself runs every mode inside the real server in ``test_server_triton.py``."""

from __future__ import annotations

import pytest

from nemotron_sglang.sglang_plugin import attention_backend as nab


def test_reference_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.delenv(nab.IMPL_ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert nab.default_impl("cpu") == "reference"


def test_triton_where_it_can_run(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv(nab.IMPL_ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert nab.default_impl("cuda") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert nab.default_impl("cpu") == "triton"


def test_env_forces_and_is_checked(monkeypatch):
    monkeypatch.setenv(nab.IMPL_ENV, "reference")
    assert nab.default_impl("cuda") == "reference"
    monkeypatch.setenv(nab.IMPL_ENV, "flashinfer")
    assert nab.default_impl("cuda") == "flashinfer"
    monkeypatch.setenv(nab.IMPL_ENV, "flash")
    with pytest.raises(ValueError, match=nab.IMPL_ENV):
        nab.default_impl("cpu")
