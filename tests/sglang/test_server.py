"""The real SGLang 0.5.23 server on CPU, with the plugin, a tiny NLD checkpoint and HTTP requests.

The tri-mode dLLM server (``--dllm-algorithm NemotronTriMode``) is started and stopped here
(loopback only); every greedy output is compared with core's decoders token for token. The plain
AR server of the same checkpoint is tested in ``test_server_ar.py``.
"""

from __future__ import annotations

import json

import pytest

from sglang_server import (PROMPTS, ROOT, Server, ckpt, core32, core_ids,  # noqa: F401
                           mixed_modes_equal_core)

pytest.importorskip("sglang")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def dllm(ckpt, tmp_path_factory):
    s = Server(ckpt, tmp_path_factory.mktemp("logs") / "dllm.log",
               ["--dllm-algorithm", "NemotronTriMode", "--dllm-algorithm-config",
                str(ROOT / "launch" / "tri_mode.yaml"), "--max-running-requests", "4",
                "--enable-metrics"])
    yield s
    s.stop()


def test_every_served_mode_equals_core(dllm, core32):
    for ids in PROMPTS:                       # the long prompt runs past original_max (32)
        ar = core_ids(core32, "ar", ids, 16)
        assert dllm.generate_ids(ids, 16, decode_mode="ar")["output_ids"] == ar
        got = dllm.generate_ids(ids, 16, decode_mode="linear_spec")
        assert got["output_ids"] == ar        # lossless self-speculation
        meta = got["meta_info"]
        assert meta["nld_mode"] == "linear_spec" and meta["nld_forwards"] > 0
        quad = dllm.generate_ids(ids, 16, decode_mode="quadratic_spec")
        assert quad["output_ids"] == ar       # the fused pass runs through the plugin's attention
        diff = dllm.generate_ids(ids, 16, decode_mode="diffusion")["output_ids"]
        assert diff == core_ids(core32, "diffusion", ids, 16)


@pytest.mark.parametrize("mode", ["linear_spec", "diffusion"])
def test_meta_info_carries_each_counter_once(dllm, mode):
    """Each ``nld_*`` counter is one value (SGLang's per-token list collapsed to its latest):
    a stream's every chunk carries the value so far, its last the final one, equal to the
    non-streamed answer's."""
    from round_checks import stream_chunks
    from nemotron_sglang.sglang_plugin.surface import COUNTER_KEYS

    body = {"input_ids": PROMPTS[0], "sampling_params": {
        "max_new_tokens": 24, "temperature": 0, "custom_params": {"decode_mode": mode}}}
    whole = dllm.post_json("/generate", body)["meta_info"]
    assert all(isinstance(whole[k], (int, str)) for k in COUNTER_KEYS), whole
    chunks = [c["meta_info"] for c in stream_chunks(dllm, body)]
    assert {k: chunks[-1][k] for k in COUNTER_KEYS} == {k: whole[k] for k in COUNTER_KEYS}
    forwards = [c["nld_forwards"] for c in chunks if "nld_forwards" in c]
    assert forwards == sorted(forwards) and forwards[-1] == whole["nld_forwards"] > 0


def test_generate_takes_top_level_fields_as_the_openai_routes_do(dllm):
    """SGLang's /generate parser drops unknown top-level fields silently: the plugin copies NLD's
    into custom_params (an explicit custom_params value wins), and a bad one is a 400."""
    body = {"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 12, "temperature": 0}}
    top = dllm.post_json("/generate", {**body, "decode_mode": "diffusion", "max_steps": 1})
    inner = dllm.post_json("/generate", {**body, "sampling_params": {
        **body["sampling_params"], "custom_params": {"decode_mode": "diffusion", "max_steps": 1}}})
    assert top["meta_info"]["nld_mode"] == "diffusion"
    assert top["output_ids"] == inner["output_ids"]
    assert top["meta_info"]["nld_forwards"] == inner["meta_info"]["nld_forwards"]
    wins = dllm.post_json("/generate", {**body, "decode_mode": "diffusion", "sampling_params": {
        **body["sampling_params"], "custom_params": {"decode_mode": "ar"}}})
    assert wins["meta_info"]["nld_mode"] == "ar"
    status, text = dllm.post("/generate", {**body, "decode_mode": "warp"})
    assert status == 400 and "decode_mode" in text, text[:300]


def test_concurrent_mixed_modes(dllm, core32):
    mixed_modes_equal_core(dllm, core32, 12, timeout=180)


def test_openai_client_modes_usage_and_streaming(dllm):
    client = openai.OpenAI(base_url=dllm.url + "/v1", api_key="none", timeout=120)
    texts = {}
    for mode in ("ar", "linear_spec", "quadratic_spec", "diffusion"):
        r = client.completions.create(model="nld", prompt="Hello world", max_tokens=10,
                                      temperature=0, extra_body={"decode_mode": mode})
        extra = r.usage.model_extra
        assert extra["decode_mode"] == mode
        assert extra["forwards"] > 0
        assert extra["tokens_per_forward"] == pytest.approx(r.usage.completion_tokens /
                                                            extra["forwards"], abs=1e-3)
        texts[mode] = r.choices[0].text
    assert texts["ar"] == texts["linear_spec"] == texts["quadratic_spec"]
    # custom_params spelling and streaming (committed runs arrive as chunks)
    stream = client.completions.create(model="nld", prompt="Hello world", max_tokens=10,
                                       temperature=0, stream=True,
                                       extra_body={"custom_params": {"decode_mode": "linear_spec"}})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == texts["ar"]
    stream = client.completions.create(model="nld", prompt="Hello world", max_tokens=10,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"decode_mode": "diffusion"})
    final = [c for c in stream if c.usage is not None][-1]
    assert final.usage.model_extra["decode_mode"] == "diffusion"
    assert final.usage.model_extra["forwards"] > 0
    chat = client.chat.completions.create(model="nld", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=6, temperature=0,
                                          extra_body={"decode_mode": "diffusion"})
    assert chat.usage.model_extra["decode_mode"] == "diffusion"


@pytest.mark.parametrize("body,field", [
    ({"decode_mode": "turbo"}, "decode_mode"),
    ({"custom_params": {"decode_mode": "turbo"}}, "decode_mode"),
    ({"threshold": 1.5}, "threshold"),
    ({"block_length": 3}, "block_length"),
    ({"decode_mode": "linear_spec", "block_length": 8}, "block_length"),   # above the server's 4
    ({"decode_mode": "ar", "max_steps": 2}, "max_steps"),      # diffusion's step budget only
    ({"max_steps": 2}, "max_steps"),                           # the default mode: linear_spec
    ({"decode_mode": "diffusion", "max_steps": 0}, "max_steps"),
    ({"decode_mode": "diffusion", "max_steps": 2, "regex": "[a-z]+"}, "max_steps"),
    ({"thinking_budget": 4}, "thinking_budget"),              # no --enable-strict-thinking
    ({"suffix": " after"}, "suffix"),                          # infill: diffusion only
    ({"decode_mode": "quadratic_spec", "suffix": " after"}, "suffix"),
    ({"decode_mode": "diffusion", "suffix": " The number after 41 is 42."}, "suffix"),  # > 3
    ({"decode_mode": "diffusion", "canvas": [100] * 8}, "canvas"),     # above the block of 4
    ({"decode_mode": "diffusion", "canvas": [100, 512]}, "canvas"),    # outside the vocabulary
    ({"decode_mode": "diffusion", "canvas": [100], "regex": "[a-z]+"}, "canvas"),
    ({"top_p": 0.0}, "top_p"),                        # supported, but out of range
    ({"frequency_penalty": 5.0}, "frequency_penalty"),
    ({"stream": True, "decode_mode": "turbo"}, "decode_mode"),
    ({"prompt": [5, 512]}, "input_ids"),
    ({"prompt": ""}, "empty"),
    ({"max_tokens": 100000}, "context length"),
])
def test_bad_requests_get_400_naming_the_field(dllm, body, field):
    status, text = dllm.post("/v1/completions", {"model": "nld", "prompt": "Hello",
                                                 "max_tokens": 4, **body})
    assert status == 400, text
    assert field.lower() in json.loads(text)["message"].lower()
    assert dllm.post("/v1/completions", {"model": "nld", "prompt": "Hello", "max_tokens": 2})[0] == 200


@pytest.mark.parametrize("mode", ["diffusion", "linear_spec", "quadratic_spec"])
def test_block_length_below_the_servers_equals_core_at_that_block(dllm, core32, mode):
    from nemotron_sglang.core.decoding import DecodeParams, Request, generate

    for ids in PROMPTS[:2]:
        got = dllm.generate_ids(ids, 10, decode_mode=mode, block_length=2)
        (want,) = generate(core32, [Request(ids, mode, DecodeParams(max_new_tokens=10,
                                                                     block_length=2))])
        assert got["output_ids"] == want.output_ids, (mode, ids)


def test_openai_completions_return_logprobs(dllm):
    status, text = dllm.post("/v1/completions", {"model": "nld", "prompt": "Hello",
                                                 "max_tokens": 5, "logprobs": 2,
                                                 "temperature": 0})
    assert status == 200, text
    lp = json.loads(text)["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == 5 and all(v <= 0 for v in lp["token_logprobs"])
    assert all(len(top) == 2 for top in lp["top_logprobs"])


def test_out_of_vocabulary_ids_are_refused_and_the_server_survives(dllm):
    status, text = dllm.post("/generate", {"input_ids": [5, 512], "sampling_params": {
        "max_new_tokens": 4, "custom_params": {"decode_mode": "ar"}}})
    assert status == 400 and "input_ids" in text
    assert dllm.generate_ids([5, 6], 2, decode_mode="ar")["output_ids"]


def test_auto_mode_reports_its_choice(dllm, core32):
    got = dllm.generate_ids(PROMPTS[0], 10, decode_mode="auto")
    assert got["output_ids"] == core_ids(core32, "ar", PROMPTS[0], 10)   # lossless either way
    # the choice per round (the launch YAML's cost table and this checkpoint's acceptance) is
    # reported as auto(<most rounds>,...) and as the block most rounds ran (1 = ar)
    meta = got["meta_info"]
    mode = meta["nld_mode"]
    assert mode.startswith("auto(") and mode.endswith(")"), meta
    labels = mode[len("auto("):-1].split(",")
    assert all(lb == "ar" or lb.startswith("linear_spec/") for lb in labels), meta
    first = 1 if labels[0] == "ar" else int(labels[0].split("/")[1])
    assert meta["nld_block_length"] == first, meta


METRIC = {"requests": "nemotron_sglang_requests_total", "tokens": "nemotron_sglang_tokens_total",
          "forwards": "nemotron_sglang_forwards_total",
          "tokens_per_forward_count": "nemotron_sglang_tokens_per_forward_count"}


def _nld_metrics(server) -> dict:
    """The plugin's per-mode counters and TPF histogram counts: (name, mode) -> value."""
    import urllib.request

    text = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
    assert "sglang:" in text                 # SGLang's own metrics are still there
    out: dict = {}
    for line in text.splitlines():
        if line.startswith(tuple(METRIC.values())):
            name, mode = line.split("{")[0], line.split('mode="')[1].split('"')[0]
            out[(name, mode)] = out.get((name, mode), 0.0) + float(line.split()[-1])
    return out


def test_prometheus_counters_per_mode(dllm):
    """This test's own requests move the counters: one request, its tokens and forwards, and
    one TPF observation per mode (read before and after; nothing else runs meanwhile)."""
    import time

    before = _nld_metrics(dllm)
    sent = {}
    for mode in ("ar", "diffusion"):
        meta = dllm.generate_ids([9, 10, 11], 4, decode_mode=mode)["meta_info"]
        sent[mode] = {"requests": 1, "tokens": meta["completion_tokens"],
                      "forwards": meta["nld_forwards"], "tokens_per_forward_count": 1}
    deadline = time.monotonic() + 10
    while True:                      # the scheduler's counters reach /metrics shortly after
        after = _nld_metrics(dllm)
        moved = {mode: {k: after.get((METRIC[k], mode), 0.0) - before.get((METRIC[k], mode), 0.0)
                        for k in want} for mode, want in sent.items()}
        if moved == sent or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert moved == sent


def test_canvas_rounds_are_logged_as_decode_steps(dllm):
    """SGLang's dLLM path reports every round as a prefill (a log line per token in ar); canvas
    rounds are reported as decode steps (``metrics.report_canvas_round``): the prompt's context
    pass is the request's one "Prefill batch" line, and 48 ar rounds (one per token) give a
    "Decode batch" line, SGLang's one per --decode-log-interval (40) steps."""
    import time

    start = len(dllm.log.read_text())
    status, body = dllm.post("/generate", {"input_ids": [9, 10, 11], "sampling_params": {
        "max_new_tokens": 48, "temperature": 0, "ignore_eos": True,
        "custom_params": {"decode_mode": "ar"}}})
    assert status == 200, body
    assert len(json.loads(body)["output_ids"]) == 48
    deadline = time.time() + 10
    while "Decode batch" not in dllm.log.read_text()[start:] and time.time() < deadline:
        time.sleep(0.2)
    new = dllm.log.read_text()[start:]
    assert new.count("Prefill batch") == 1, new[-3000:]
    assert "Decode batch, #running-req: 1," in new, new[-3000:]


def test_invalid_json_is_a_client_error(dllm):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(dllm.url + "/v1/completions", data=b'{"model": "nld", "prompt": ',
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=30)
        status = 200
    except urllib.error.HTTPError as e:
        status = e.code
    assert 400 <= status < 500
    assert dllm.post("/v1/completions", {"model": "nld", "prompt": "Hi", "max_tokens": 2})[0] == 200


@pytest.mark.parametrize("k", [1, 2])
def test_step_budget_equals_core_and_caps_the_passes(dllm, core32, k):
    """max_steps = k through /generate and the OpenAI route: the tokens are core's with the same
    budget, and no block takes more than k denoise passes (at threshold 1, without a budget a
    block of the server's 4 takes 3: k = 2 is then the exact count, k = 1 one fewer)."""
    from nemotron_sglang.core.decoding import DecodeParams, Request, generate

    for ids in PROMPTS:
        (want,) = generate(core32, [Request(ids, "diffusion", DecodeParams(
            max_new_tokens=16, threshold=1.0, max_steps=k))])
        got = dllm.generate_ids(ids, 16, decode_mode="diffusion", threshold=1.0, max_steps=k)
        assert got["output_ids"] == want.output_ids
        meta = got["meta_info"]
        forwards, cycles = meta["nld_forwards"], meta["nld_cycles"]
        # k denoise passes per block at most, plus the KV refresh between blocks (core's count)
        assert cycles >= 4 and forwards <= k * cycles + cycles - 1, (forwards, cycles)
        assert forwards == want.forwards
    client = openai.OpenAI(base_url=dllm.url + "/v1", api_key="none")
    r = client.completions.create(model="nld", prompt="Hello", max_tokens=8, temperature=0,
                                  extra_body={"decode_mode": "diffusion", "max_steps": k,
                                              "threshold": 1.0})
    assert r.usage.model_extra["decode_mode"] == "diffusion"
    cycles = r.usage.model_extra["cycles"]
    assert r.usage.model_extra["forwards"] <= k * cycles + cycles - 1


def test_infill_keeps_the_given_tokens_and_equals_core(dllm, core32, ckpt):
    """/generate with a canvas and /v1/completions with a suffix (diffusion): the given tokens
    are kept, the masks filled, and the tokens are core's for the same canvas."""
    from nemotron_sglang.core.decoding import DecodeParams, Request, generate
    from nemotron_sglang.core.modes import infill_canvas
    from nemotron_sglang.core.tokenizer import encode, load_tokenizer

    mask = core32.config.mask_token_id
    for ids, canvas in zip(PROMPTS, ([mask, 300, mask, mask], [7, mask, mask], [mask, mask])):
        (want,) = generate(core32, [Request(ids, "diffusion", DecodeParams(
            max_new_tokens=16, canvas=tuple(canvas)))])
        got = dllm.generate_ids(ids, 16, decode_mode="diffusion", canvas=canvas)
        out = got["output_ids"]
        assert out == want.output_ids and mask not in out
        assert all(g == mask or t == g for t, g in zip(out, canvas))
        assert got["meta_info"]["finish_reason"]["type"] == "stop"
    tok = load_tokenizer(ckpt)
    text = "<|mask|> 4<|mask|>"                  # a canvas as text: mask placeholders
    canvas = encode(tok, text)
    assert canvas.count(mask) == 2 and len(canvas) <= core32.config.block_size
    (want,) = generate(core32, [Request(PROMPTS[0], "diffusion", DecodeParams(
        max_new_tokens=16, canvas=tuple(canvas)))])
    assert dllm.generate_ids(PROMPTS[0], 16, decode_mode="diffusion", canvas=text)[
        "output_ids"] == want.output_ids
    suffix = encode(tok, " 4")
    prompt = encode(tok, "The number after 41 is")
    canvas, gap = infill_canvas(suffix, core32.config.block_size, 16, mask)
    (want,) = generate(core32, [Request(prompt, "diffusion", DecodeParams(
        max_new_tokens=16, canvas=canvas, canvas_emit=gap))])
    got = dllm.generate_ids(prompt, 16, decode_mode="diffusion", suffix_ids=suffix)
    assert got["output_ids"] == want.output_ids and len(want.output_ids) <= gap
    status, body = dllm.post("/v1/completions", {
        "model": "nld", "prompt": "The number after 41 is", "suffix": " 4", "max_tokens": 16,
        "temperature": 0, "decode_mode": "diffusion"})
    assert status == 200, body
    assert json.loads(body)["choices"][0]["text"] == got["text"]
    from round_checks import wait_idle

    assert wait_idle(dllm) == 0              # the infill rounds leave no KV behind



def test_images_for_the_text_model_are_refused(dllm):
    """The text checkpoint takes no images: SGLang's /generate would drop them silently (the
    plugin answers 400); its chat route refuses image parts itself."""
    tiny_png = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4"
                "nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")
    status, text = dllm.post("/generate", {"text": "Hello", "image_data": [tiny_png],
                                           "sampling_params": {"max_new_tokens": 2}})
    assert status == 400 and "image_data" in text and "text-only" in text, text
    status, text = dllm.post("/v1/chat/completions", {"model": "nld", "max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": tiny_png}},
                                     {"type": "text", "text": "Hi"}]}]})
    assert status == 400 and "image_url" in text, text      # SGLang's own chat-route refusal
