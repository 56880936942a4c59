"""Tests for the tiny NLD-format tokenizer (nemotron_sglang.core.tokenizer)."""

from __future__ import annotations

import json

import pytest

from nemotron_sglang.core import tokenizer as T

ROUND_TRIP = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "héllo wörld — naïve café, 世界 こんにちは, emoji 🙂🚀",
    "line one\nline two\r\n\ttabbed\n\n  trailing spaces  ",
    "def f(x: int) -> int:\n    return x ** 2 + 3.14159\n",
    "0123456789 42 1e-9 -7 3,000,000",
    "zero\u200bwidth and \x00 control \x7f bytes",
]


@pytest.fixture(scope="module")
def tok():
    return T.build_tokenizer(512)


def test_special_table():
    assert len(T.SPECIAL_TOKENS) == T.NUM_RESERVED == 128
    assert T.SPECIAL_TOKENS[T.BOS_ID] == "<s>" and T.BOS_ID == 1
    assert T.SPECIAL_TOKENS[T.EOS_ID] == "<|im_end|>" and T.EOS_ID == 11
    assert T.SPECIAL_TOKENS[T.MASK_ID] == "<|mask|>" and T.MASK_ID == 100
    assert T.SPECIAL_TOKENS[T.UNK_ID] == "<unk>" and T.UNK_ID == 0
    assert T.SPECIAL_TOKENS[2] == "</s>" and T.SPECIAL_TOKENS[10] == "<|im_start|>"
    assert T.SPECIAL_TOKENS[3] == "[TOOL_CALLS]" and T.SPECIAL_TOKENS[7] == "[/TOOL_RESULTS]"
    assert T.SPECIAL_TOKENS[8] == "<SPECIAL_8>" and T.SPECIAL_TOKENS[127] == "<SPECIAL_127>"
    assert len(set(T.SPECIAL_TOKENS.values())) == 128


@pytest.mark.parametrize("vocab_size", [512, 1024])
def test_ids_and_vocab_size(vocab_size):
    tok = T.build_tokenizer(vocab_size)
    assert tok.get_vocab_size() == vocab_size
    assert tok.token_to_id("<s>") == 1
    assert tok.token_to_id("<|im_end|>") == 11
    assert tok.token_to_id("<|mask|>") == 100
    assert tok.token_to_id("<unk>") == 0
    for i, s in T.SPECIAL_TOKENS.items():
        assert tok.token_to_id(s) == i
    # the 256 byte-level symbols follow the specials
    alphabet = set(__import__("tokenizers").pre_tokenizers.ByteLevel.alphabet())
    assert {tok.id_to_token(i) for i in range(128, 384)} == alphabet


def test_deterministic():
    assert T.build_tokenizer(512).to_str() == T.build_tokenizer(512).to_str()
    assert T.build_tokenizer(1024).to_str() == T.build_tokenizer(1024).to_str()


def test_merges_learned(tok):
    ids = T.encode(tok, "the quick brown fox")
    assert any(i >= 384 for i in ids)
    assert len(ids) < len("the quick brown fox".encode())


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(tok, text):
    assert T.decode(tok, T.encode(tok, text)) == text


def test_special_text_encodes_to_single_id(tok):
    for i in (T.BOS_ID, T.EOS_ID, T.MASK_ID, T.UNK_ID, 10, 2, 57):
        s = T.SPECIAL_TOKENS[i]
        assert T.encode(tok, s) == [i]
        ids = T.encode(tok, f"abc {s} def")
        assert ids.count(i) == 1 and all(j >= 128 for j in ids if j != i)
        assert T.decode(tok, ids) == f"abc {s} def"
    ids = T.encode(tok, "x<|mask|><|mask|>y")
    assert ids.count(T.MASK_ID) == 2
    assert T.decode(tok, ids, skip_special=True) == "xy"


def test_no_bos_added(tok):
    assert T.encode(tok, "hello")[0] != T.BOS_ID
    assert T.encode(tok, "") == []


def test_ordinary_text_avoids_special_ids(tok):
    texts = ROUND_TRIP + ["<s", "s>", "<|im_end", "|mask|>", "< s >", "<SPECIAL_5", "</ s>"]
    for text in texts:
        assert all(i >= 128 for i in T.encode(tok, text)), text


def test_save_load_round_trip(tok, tmp_path):
    T.save_tokenizer(tok, tmp_path / "ckpt")
    loaded = T.load_tokenizer(tmp_path / "ckpt")
    assert loaded.to_str() == tok.to_str()
    for text in ROUND_TRIP + ["a <|mask|> b <|im_end|>"]:
        assert T.encode(loaded, text) == T.encode(tok, text)
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert names == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "chat_template.jinja"}


def test_config_files(tok, tmp_path):
    T.save_tokenizer(tok, tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert cfg["bos_token"] == "<s>"
    assert cfg["eos_token"] == "<|im_end|>"
    assert cfg["unk_token"] == "<unk>"
    assert cfg["pad_token"] == "<|im_end|>"
    assert cfg["add_bos_token"] is False
    assert isinstance(cfg["model_max_length"], int) and cfg["model_max_length"] > 0
    assert cfg["chat_template"] == T.CHAT_TEMPLATE
    decoder = cfg["added_tokens_decoder"]
    assert set(decoder) == {str(i) for i in range(128)}
    assert decoder["100"] == {"content": "<|mask|>", "lstrip": False, "normalized": False,
                              "rstrip": False, "single_word": False, "special": True}
    assert decoder["11"]["content"] == "<|im_end|>" and decoder["1"]["content"] == "<s>"
    stm = json.loads((tmp_path / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert stm == {"bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>",
                   "pad_token": "<|im_end|>"}
    assert (tmp_path / "chat_template.jinja").read_text(encoding="utf-8") == T.CHAT_TEMPLATE


def test_chat_template_renders(tok):
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(T.CHAT_TEMPLATE)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = template.render(messages=messages, add_generation_prompt=True)
    assert text == ("<s><|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think></think>\n\n")
    assert template.render(messages=messages, add_generation_prompt=False).endswith("<|im_end|>\n")
    ids = T.encode(tok, text)
    assert ids[0] == T.BOS_ID and ids.count(10) == 3 and ids.count(T.EOS_ID) == 2


def test_load_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        T.load_tokenizer(tmp_path / "nowhere")


@pytest.mark.parametrize("vocab_size", [0, 128, 384])
def test_vocab_too_small(vocab_size):
    with pytest.raises(ValueError):
        T.build_tokenizer(vocab_size)


def test_minimum_vocab_and_custom_texts():
    assert T.build_tokenizer(385).get_vocab_size() == 385
    tok = T.build_tokenizer(390, texts=["banana bandana " * 20, "abracadabra"])
    assert tok.get_vocab_size() == 390
    assert T.decode(tok, T.encode(tok, "bandana!")) == "bandana!"
    with pytest.raises(ValueError):
        T.build_tokenizer(5000, texts=["tiny"])


def _hf(tok):
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=T.CHAT_TEMPLATE)


ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}},
                   "required": ["a"]}}}


@pytest.mark.parametrize("arguments", ['{"a": 3}', {"a": 3}])
def test_chat_template_renders_tools_calls_and_results(tok, arguments):
    """Tools, an assistant's call (JSON-string arguments as a client sends them, or the dict
    SGLang hands the template) and the tool's result, in the Mistral family's markers; each
    marker is one token that decodes as text (not special)."""
    messages = [{"role": "user", "content": "What is 3?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c0", "type": "function",
                     "function": {"name": "add", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "c0", "content": "3"}]
    text = _hf(tok).apply_chat_template(messages, tools=[ADD], tokenize=False,
                                        add_generation_prompt=True)
    assert text == (
        '<s><|im_start|>system\n[AVAILABLE_TOOLS][{"name": "add", "parameters": {"type": '
        '"object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}]'
        '[/AVAILABLE_TOOLS]<|im_end|>\n'
        '<|im_start|>user\nWhat is 3?<|im_end|>\n'
        '<|im_start|>assistant\n<think></think>\n\n'
        '[TOOL_CALLS] [{"name":"add", "arguments":{"a": 3}}]'
        '<|im_end|>\n<|im_start|>tool\n[TOOL_RESULTS]3[/TOOL_RESULTS]<|im_end|>\n'
        '<|im_start|>assistant\n<think></think>\n\n')
    ids = T.encode(tok, text)
    for i in (T.TOOL_CALLS_ID, T.TOOLS_START_ID, T.TOOLS_END_ID, T.RESULTS_START_ID,
              T.RESULTS_END_ID):
        assert ids.count(i) == 1
        assert T.decode(tok, [i], skip_special=True) == T.SPECIAL_TOKENS[i]


def test_chat_template_without_tools_is_plain_chatml(tok):
    """No tools: ChatML turns; the assistant's turn opens the reasoning section with
    ``enable_thinking`` and writes it closed and empty otherwise (so the model never decides)."""
    messages = [{"role": "user", "content": "Hi"}]
    hf = _hf(tok)
    assert hf.apply_chat_template(messages, tools=None, tokenize=False) == \
        "<s><|im_start|>user\nHi<|im_end|>\n"
    on = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                enable_thinking=True)
    assert on.endswith("<|im_start|>assistant\n<think>\n")
    for kw in ({}, {"enable_thinking": False}):
        off = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)
        assert off.endswith("<|im_start|>assistant\n<think></think>\n\n")
    # the two openings differ in their second token: <think> "\n" vs <think> </think>
    assert T.encode(tok, "<think>\n")[1] != T.encode(tok, "<think></think>")[1]


def test_chat_template_writes_reasoning_before_the_answer(tok):
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "42.", "reasoning_content": "41 + 1 = 42."}]
    assert _hf(tok).apply_chat_template(messages, tokenize=False).endswith(
        "<|im_start|>assistant\n<think>\n41 + 1 = 42.\n</think>\n\n42.<|im_end|>\n")


def test_sglang_mistral_parser_reads_the_rendered_call(tok):
    """What the template writes for a call is what SGLang's ``mistral`` tool-call parser reads
    back: the same name and arguments."""
    pytest.importorskip("sglang")
    from sglang.srt.entrypoints.openai.protocol import Tool
    from sglang.srt.function_call.mistral_detector import MistralDetector

    messages = [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c0", "type": "function", "function": {"name": "add", "arguments": '{"a": 17}'}}]}]
    text = _hf(tok).apply_chat_template(messages, tokenize=False)
    body = text.split("<|im_start|>assistant\n<think></think>\n\n", 1)[1]
    body = body.removesuffix("<|im_end|>\n")
    got = MistralDetector().detect_and_parse(body, [Tool(**ADD)])
    assert [(c.name, json.loads(c.parameters)) for c in got.calls] == [("add", {"a": 17})]
    # and it is the form tool_choice required / named forces (the parser's structural tag)
    info = MistralDetector().structure_info()("add")
    assert body.startswith(info.begin) and body.endswith(info.end), (body, info)


@pytest.mark.parametrize("template", ["CHAT_TEMPLATE", "VLM_CHAT_TEMPLATE"])
def test_sglang_reads_thinking_as_off_unless_enabled(template):
    """SGLang's template detection must read the toggle as ``enable_thinking``, default off:
    otherwise a reasoning parser (nemotron_3 defaults to on) files a plain chat's whole answer
    under ``reasoning_content``."""
    pytest.importorskip("sglang")
    from sglang.srt.parser.template_detection import detect_reasoning_pattern

    _, config = detect_reasoning_pattern(getattr(T, template))
    assert config is not None and config.toggle_param == "enable_thinking"
    assert config.default_enabled is False
