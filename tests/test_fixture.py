"""The committed trained fixture ``tests/fixtures/nld-tiny-rules`` on held-out rule-corpus prompts.

Every decoder runs on it; greedy ``linear_spec`` (LoRA on and off) and ``quadratic_spec`` equal
``ar`` token for token; ``ar`` follows the rule on most prompts (threshold = measured accuracy
minus a margin, see the fixture README). The slow test trains a few steps of ``train_tiny`` on
a tiny geometry and checks that the loss falls. Skipped only where the fixture is absent.
"""

from __future__ import annotations


import pytest
import torch

from nemotron_sglang.core.decoding import DecodeParams, Request, generate
from nemotron_sglang.core.tokenizer import decode, encode, load_tokenizer
from nemotron_sglang.core.weights import load_model
from nemotron_sglang.testing import corpus
from nemotron_sglang.data import EMBEDDED as FIXTURE

EVAL_SEED = corpus.EVAL_SEED_BASE + 4242     # never a training seed
AR_RULE_ACC_MIN = 0.85                       # stage 1: 23/24 here; stages 3, 4, 7: 95/96 of this seed (README)
MAX_NEW = 64

needs_fixture = pytest.mark.skipif(not (FIXTURE / "config.json").exists(),
                                   reason="tests/fixtures/nld-tiny-rules is absent")


def follows_rule(text: str, continuation: str, cut: bool) -> bool:
    if text.startswith(continuation):
        return True
    return cut and len(text) < len(continuation) and continuation.startswith(text)


@pytest.fixture(scope="module")
def fixture():
    model = load_model(FIXTURE, dtype=torch.float32)
    tok = load_tokenizer(FIXTURE)
    exs = corpus.examples(EVAL_SEED, 24)
    prompts = [encode(tok, e["prompt"]) for e in exs]
    return model, tok, prompts, [e["continuation"] for e in exs]


def _run(model, prompts, mode, block=None, use_lora=True, threshold=0.9):
    params = DecodeParams(max_new_tokens=MAX_NEW, block_length=block, threshold=threshold,
                          use_lora=use_lora)
    return generate(model, [Request(p, mode, params) for p in prompts])


@pytest.fixture(scope="module")
def ar_results(fixture):
    model, _, prompts, _ = fixture
    return _run(model, prompts, "ar")


@needs_fixture
def test_fixture_is_small_and_in_nld_layout():
    from nemotron_sglang.core.config import NLDConfig

    total = sum(f.stat().st_size for f in FIXTURE.rglob("*") if f.is_file())
    assert total <= 10 * 2 ** 20
    cfg = NLDConfig.from_pretrained(FIXTURE)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.mask_token_id) == (1, 11, 100)
    assert cfg.block_size == 32 and cfg.hidden_size <= 384
    assert (FIXTURE / "linear_spec_lora" / "adapter_model.safetensors").exists()


@needs_fixture
def test_ar_follows_the_rule(fixture, ar_results):
    _, tok, _, conts = fixture
    ok = [follows_rule(decode(tok, r.output_ids, skip_special=True), c,
                       len(r.output_ids) >= MAX_NEW) for r, c in zip(ar_results, conts)]
    assert sum(ok) / len(ok) >= AR_RULE_ACC_MIN, ok


@needs_fixture
@pytest.mark.parametrize("block", [8, 32])
@pytest.mark.parametrize("mode,use_lora", [("linear_spec", True), ("linear_spec", False),
                                           ("quadratic_spec", False)])
def test_self_spec_equals_ar(fixture, ar_results, mode, use_lora, block):
    model, _, prompts, _ = fixture
    n = 8 if mode == "quadratic_spec" and block == 32 else len(prompts)
    res = _run(model, prompts[:n], mode, block, use_lora)
    for r, a in zip(res, ar_results[:n]):
        assert r.output_ids == a.output_ids
    # trained weights: drafts are accepted, so self-speculation beats one token per forward
    assert sum(len(r.output_ids) for r in res) / sum(r.forwards for r in res) > 1.5


@needs_fixture
def test_diffusion_decodes_held_out_prompts(fixture, ar_results):
    model, tok, prompts, conts = fixture
    res = _run(model, prompts[:8], "diffusion", 32)
    tpf = sum(len(r.output_ids) for r in res) / sum(r.forwards for r in res)
    assert tpf > 3.0     # measured 6.28 on these 8 prompts
    ok = sum(follows_rule(decode(tok, r.output_ids, skip_special=True), c,
                          len(r.output_ids) >= MAX_NEW) for r, c in zip(res, conts))
    assert ok >= 5       # measured 7 / 8 (diffusion at threshold 0.9 drifts more than ar)


@pytest.mark.slow
def test_train_tiny_loss_falls():
    from nemotron_sglang.testing.train_data import Stream
    from nemotron_sglang.testing.train_tiny import TrainConfig, train_base
    from nemotron_sglang.core.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    tc = TrainConfig(seed=0, steps=40, batch=8, seq_len=64, hidden=64, layers=2, heads=2,
                     kv_heads=1, head_dim=32, intermediate=128, vocab=400, warmup=5, lr=3e-3,
                     block_sizes=((32, 0.5), (8, 0.5)))
    tok = build_tokenizer(tc.vocab, corpus.documents(5, 500))
    stream = Stream(tok, tc.seed, 400)
    _, hist = train_base(tc, None, tok, stream, None, quiet=True)
    assert hist[0]["step"] == 0 and hist[-1]["step"] == tc.steps - 1
    assert hist[-1]["loss"] < hist[0]["loss"] - 2.0, hist


@pytest.mark.slow
def test_train_tiny_chat_rows_and_init(tmp_path):
    """The recipe's chat path: conversations rendered by the chat template join each step
    (their loss falls too), as do the short reply windows (``reply_rows``), and ``init``
    continues from a saved checkpoint's weights."""
    from nemotron_sglang.core.tokenizer import BOS_ID, TOOL_CALLS_ID, build_tokenizer
    from nemotron_sglang.testing.train_data import Stream, chat_stream
    from nemotron_sglang.testing.train_tiny import TrainConfig, save_model, train_base

    torch.set_num_threads(1)
    tc = TrainConfig(seed=0, steps=30, batch=4, seq_len=64, hidden=64, layers=2, heads=2,
                     kv_heads=1, head_dim=32, intermediate=128, vocab=400, warmup=5, lr=3e-3,
                     block_sizes=((32, 0.5), (8, 0.5)), chat_rows=4, chat_len=96,
                     chat_aligned=0.5, chat_reply_weight=2.0, chat_reply_uniform_t=True,
                     reply_rows=2, reply_len=64)
    tok = build_tokenizer(tc.vocab, corpus.documents(5, 500))
    stream, chat = Stream(tok, tc.seed, 300), chat_stream(tok, tc.seed, 300)
    assert chat.ids[0].item() == BOS_ID and (chat.ids == TOOL_CALLS_ID).any()   # a call seen
    model, hist = train_base(tc, None, tok, stream, None, quiet=True, chat=chat)
    assert hist[-1]["chat"] < hist[0]["chat"] - 2.0, hist
    assert hist[-1]["reply"] < hist[0]["reply"] - 2.0, hist
    save_model(tmp_path, model, tok, "float32")
    tc.init, tc.steps = str(tmp_path), 1
    _, again = train_base(tc, None, tok, stream, None, quiet=True, chat=chat)
    assert again[0]["loss"] < hist[0]["loss"] - 1.0      # starts near where the first run ended


def test_aligned_chat_rows_open_a_block_on_a_reply():
    """``chat_stream`` marks where every assistant reply's generated part starts (right after
    the generation prompt serving renders); ``aligned`` rows put such a start at the given row
    offset, a block start, where serving's canvas opens."""
    import random

    from nemotron_sglang.core.tokenizer import build_tokenizer
    from nemotron_sglang.testing import chat_corpus
    from nemotron_sglang.testing.train_data import Stream, chat_stream, reply_starts

    tok = build_tokenizer(400, corpus.documents(5, 500))
    convs = chat_corpus.conversations(2, 200)          # chat_stream's draw for seed 0
    chat = chat_stream(tok, 0, 200)
    replies = [m for c in convs for m in c["messages"] if m["role"] == "assistant"]
    assert len(chat.answers) == len(replies) > 200     # tool conversations reply twice
    ends = ("<think></think>\n\n", "<think>\n")
    for a, m in zip(chat.answers, replies):
        before = decode(tok, chat.ids[a - 8:a].tolist(), skip_special=False)
        after = decode(tok, chat.ids[a:a + 24].tolist(), skip_special=False)
        assert before.endswith(ends), before
        first = m.get("reasoning_content") or m["content"] or "[TOOL_CALLS]"
        assert after.startswith(first[:12]), (after, m)

    def at_reply(rows, at):
        return [decode(tok, r[at - 8:at].tolist(), skip_special=False).endswith(ends)
                for r in rows]

    assert all(at_reply(chat.batch(random.Random(3), 16, 97, 1.0, 64), 64))
    assert not all(at_reply(chat.batch(random.Random(3), 16, 97), 64))   # unaligned: by chance
    rows, aligned = chat.draw(random.Random(4), 16, 97, 0.5, 64)
    assert aligned.any() and not aligned.all() and all(at_reply(rows[aligned], 64))
    from transformers import PreTrainedTokenizerFast

    from nemotron_sglang.core.tokenizer import CHAT_TEMPLATE
    from nemotron_sglang.testing.train_data import generation_prompts
    prompts = generation_prompts(PreTrainedTokenizerFast(tokenizer_object=tok,
                                                         chat_template=CHAT_TEMPLATE))
    assert prompts == ("<|im_start|>assistant\n<think></think>\n\n",
                       "<|im_start|>assistant\n<think>\n")
    turn = "<|im_start|>assistant\n<think></think>\n\nHi<|im_end|>\n"
    assert reply_starts(turn + "<|im_start|>assistant\n<think>\nso", prompts) == [39, 82]
    text = "The quick brown fox jumps over the lazy dog."
    inside = next(a + 1 for a, b in tok.encode(text, add_special_tokens=False).offsets
                  if b - a > 1)                                   # a character inside a token
    with pytest.raises(ValueError, match="does not begin a token"):
        Stream(tok, 0, 1, docs=[text], marks=[[inside]])


def test_reply_blocks_weight_and_light_masks():
    """``ReplyBlocks``: the reply block's diffusion term scales linearly with ``weight`` (and
    nothing else does), and ``uniform_t`` draws its mask ratio as u where Beta(2, 1) draws
    sqrt(u) from the same uniform u."""
    from nemotron_sglang.core.model import NLDModel
    from nemotron_sglang.testing.train_objective import ReplyBlocks, dual_mask, noise, pass_loss
    from nemotron_sglang.testing.train_tiny import TrainConfig

    torch.manual_seed(5)
    tc = TrainConfig(hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32, intermediate=128,
                     vocab=400)
    model = NLDModel(tc.model_config()).eval()
    x = torch.randint(10, 400, (4, 64))
    rows = torch.tensor([True, False, True, False])

    def dlm(weight):
        with torch.no_grad():
            gen = torch.Generator().manual_seed(9)
            return pass_loss(model, x, x, 16, 0.4, 1.0, dual_mask(64, 16), gen,
                             ReplyBlocks(rows, 48, weight))[2].item()

    d1, d2, d3 = dlm(1.0), dlm(2.0), dlm(3.0)
    assert d2 > d1 and d3 - d1 == pytest.approx(2 * (d2 - d1), rel=1e-4)
    assert dlm(0.0) < d1

    def ratios(uniform):
        _, _, t = noise(x, 16, 0.0, torch.Generator().manual_seed(3), uniform)
        return t[:, ::16]                                   # [4, 4], one per block
    beta, unif = ratios(None), ratios(torch.ones(4, 4, dtype=torch.bool))
    keep = beta ** 2 >= 0.05                                # neither clamped
    assert keep.sum() >= 8 and torch.allclose(unif[keep], beta[keep] ** 2)
