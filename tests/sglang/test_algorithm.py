"""NemotronTriMode's ``run`` on a fake model runner reproduces core's decoders token for token.

The fake runner stands in for SGLang's ModelRunner + model: context rounds (EXTEND) causally
encode what is not cached yet and return ``next_token_logits``; canvas rounds (DLLM_EXTEND) run
B slots after the committed tokens with the causality and LoRA flag the algorithm set on the
model, write nothing, and return lazy logits (``core.logits.PassLogits``). The fake scheduler loop follows SGLang's
separate-context lifecycle: context round, canvas round, commit the returned tokens, trim at EOS
and max_new_tokens, repeat. Requests carry real SGLang ``SamplingParams``.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from conftest import random_prompts
from nemotron_sglang.testing.host_reads import HostReads
from nemotron_sglang.core.attention import CAUSAL, MaskKind
from nemotron_sglang.core.batch import ForwardBatch, PassRow
from nemotron_sglang.core.decoding import DecodeParams, Request, generate
from nemotron_sglang.core.kv_cache import PagedKVCache
from nemotron_sglang.core.logits import PassLogits
from nemotron_sglang.core.weights import load_model

sglang = pytest.importorskip("sglang")
from sglang.srt.sampling.sampling_params import SamplingParams  # noqa: E402

from nemotron_sglang.sglang_plugin.algorithm import NemotronTriMode  # noqa: E402
from nemotron_sglang.sglang_plugin.server_config import TriModeConfig  # noqa: E402
from nemotron_sglang.sglang_plugin.canvas_round import RESEED  # noqa: E402

SERVED = ("ar", "diffusion", "linear_spec", "quadratic_spec")


class FakeModel:
    """The attributes of NemotronLabsDiffusionForSGLang the algorithm uses, over core's model."""

    def __init__(self, core):
        self.core, self.nld_config = core, core.config
        self.causal_log = []

    @property
    def has_lora(self):
        return self.core.has_lora

    def install_lora(self, *a, **k):     # core's model loaded its adapter itself
        pass


class FakeRunner:
    """SGLang's ModelRunner over core's model and cache, KV semantics included: the context pass
    (EXTEND) commits what it encodes; a canvas step (``fake_custom_pass``) stages the K/V of the
    tokens it is told to write; the stash (``stash``) keeps ``req.nld.keep`` staged entries and
    drops the rest (``RESEED``: drops the last committed one too)."""

    def __init__(self, core):
        self.model = FakeModel(core)
        c = core.config
        self.cache = PagedKVCache(num_layers=c.num_hidden_layers, num_kv_heads=c.num_key_value_heads,
                                  head_dim=c.head_dim, num_pages=4096, page_size=4, dtype=core.dtype)
        self.forwards = 0
        self.passes = []               # per canvas step: its rows and the head rows computed

    def forward(self, fb, pp_proxy_tensors=None):
        self.forwards += 1
        assert not fb.forward_mode.is_dllm_extend(), "canvas rounds run through the custom pass"
        core = self.model.core
        rows = [PassRow(r.rid_int, toks, list(range(start, start + len(toks))), start, CAUSAL)
                for r, toks, start in fb.extend_rows]
        batch = ForwardBatch.from_rows(rows, write_kv=True)
        logits = core(batch, self.cache)
        for (r, toks, _), _span in zip(fb.extend_rows, batch.spans()):
            self.cache.commit(r.rid_int, len(toks))
        last = torch.stack([logits[end - 1] for _, end in batch.spans()])
        return SimpleNamespace(logits_output=SimpleNamespace(next_token_logits=last),
                               can_run_graph=False)

    def stash(self, reqs):
        for r in reqs:
            nld = getattr(r, "nld", None)
            keep = nld.keep if nld is not None else 0
            if nld is not None:
                nld.keep = 0
            if keep == RESEED:             # drop the last committed token's KV
                self.cache.rollback(r.rid_int, self.cache.length(r.rid_int) - 1)
            else:
                self.cache.commit(r.rid_int, keep)


def fake_custom_pass(model_runner, fb, rows, impl="reference", bucket=None, pack=None):
    """Stands in for custom_pass.run_custom_pass: core's model over the fake runner's cache, one
    core call per group of rows with the same (writes KV, LoRA); checks that the plan's K/V
    writes name exactly the tokens core stages (all of a causal row, the heads of a quadratic
    row) and the rows' own canvas slots."""
    model_runner.forwards += 1
    if pack is not None:                 # the step's one upload (the decisions' staged tables)
        pack.upload("cpu")
    core = model_runner.model.core
    canvas_row = {int(p): i for i, p in enumerate(fb.req_pool_indices.tolist())}
    groups: dict[tuple, list] = {}
    token_ids = [t for spec in rows for t in spec.token_ids]
    start = 0
    for spec in rows:
        want = (len(range(0, spec.q_len, spec.mask.block + 1))
                if spec.mask.kind == MaskKind.QUADRATIC else spec.q_len)
        assert spec.writes in (0, want), spec
        if spec.writes:
            assert spec.write_base == canvas_row[spec.table_row] * fb.block, spec
        row = PassRow(spec.table_row, spec.token_ids, spec.positions, spec.prefix_len, spec.mask)
        groups.setdefault((bool(spec.writes), spec.lora), []).append((start, row))
        start += spec.q_len
    lora = [spec.lora for spec in rows]
    model_runner.model.causal_log.append(("step", "rows" if any(lora) else False))
    out = torch.empty(len(token_ids), core.config.vocab_size, dtype=core.dtype)
    for (write, on), members in groups.items():
        batch = ForwardBatch.from_rows([r for _, r in members], write_kv=write, lora=on)
        logits = core(batch, model_runner.cache)
        for (s0, _), (a, b) in zip(members, batch.spans()):
            out[s0:s0 + (b - a)] = logits[a:b]
    # as the real pass: lazy logits whose head runs for the rows read (here a table lookup)
    record = {"rows": rows, "ids": list(token_ids), "head_rows": 0}
    model_runner.passes.append(record)

    def head(h):
        record["head_rows"] += len(h)
        return out[h[:, 0].long()]
    return PassLogits(torch.arange(len(token_ids))[:, None], head)


@pytest.fixture(autouse=True)
def _fake_custom_pass(monkeypatch):
    import nemotron_sglang.sglang_plugin.algorithm as algorithm_module
    monkeypatch.setattr(algorithm_module, "run_custom_pass", fake_custom_pass)


def make_req(i, prompt, mode, max_new, temperature=0.0, **custom):
    sp = SamplingParams(max_new_tokens=max_new, temperature=temperature,
                        custom_params={"decode_mode": mode, **custom})
    return SimpleNamespace(rid=f"req-{i}", rid_int=i, origin_input_ids=list(prompt), output_ids=[],
                           sampling_params=sp, return_logprob=False, logprob=None,
                           custom_logit_processor=None, finished=False, context_rounds=0)


def serve(algo, runner, reqs, eos, abort_at=None, after_round=None):
    """SGLang's separate-context lifecycle with the plugin's KV hook, reduced to what the
    algorithm can observe: a context round for what is not cached (the prompt), a canvas round,
    the stash keeping ``keep`` canvas entries, commit of the returned tokens (trim at EOS and
    max_new_tokens). Checks after every round that the KV holds exactly the committed text."""
    b = algo.block_size
    for r in reqs:
        assert algo.config.validate_request(r) is None
        runner.cache.add(r.rid_int)
    rounds = 0
    while True:
        active = [r for r in reqs if not r.finished]
        if abort_at is not None:
            for r in list(active):
                if abort_at(rounds, r):
                    r.finished, r.aborted = True, True
                    runner.cache.free(r.rid_int)
            active = [r for r in active if not r.finished]
        if not active:
            return
        rows = []
        for r in active:
            text = r.origin_input_ids + r.output_ids
            start = runner.cache.length(r.rid_int)
            if start < len(text):
                rows.append((r, text[start:], start))
        if rows:                               # SGLang runs context rounds first, alone
            ctx = SimpleNamespace(forward_mode=SimpleNamespace(is_dllm_extend=lambda: False),
                                  input_ids=torch.tensor([t for _, toks, _ in rows for t in toks]),
                                  batch_size=len(rows), nld_reqs=[r for r, _, _ in rows],
                                  extend_rows=rows)
            algo.run(runner, ctx)
            for r, _, _ in rows:
                r.context_rounds += 1
            continue
        pos = [list(range(runner.cache.length(r.rid_int), runner.cache.length(r.rid_int) + b))
               for r in active]
        for r, ps in zip(active, pos):         # what SGLang builds the canvas from
            r.dllm_block_offset, r.kv = ps[0], SimpleNamespace(req_pool_idx=r.rid_int)
        canvas = SimpleNamespace(forward_mode=SimpleNamespace(is_dllm_extend=lambda: True),
                                 input_ids=torch.zeros(len(active) * b, dtype=torch.long),
                                 positions=torch.tensor([p for ps in pos for p in ps]),
                                 out_cache_loc=torch.arange(len(active) * b),
                                 batch_size=len(active), nld_reqs=active, block=b,
                                 req_pool_indices=torch.tensor([r.rid_int for r in active]))
        _, tokens, *_ = algo.run(runner, canvas)
        for r, t in zip(active, tokens):
            t = t.tolist()
            assert 0 <= len(t) <= b
            for tok in t:                     # SGLang's update_finish_state: EOS, then length
                r.output_ids.append(tok)
                if tok == eos or len(r.output_ids) >= r.sampling_params.max_new_tokens:
                    r.finished = True
                    break
        if after_round is not None:
            after_round(rounds, active)
        runner.stash([r for r in active if not r.finished])
        for r in active:
            if r.finished:
                runner.cache.free(r.rid_int)
            else:     # KV == what AR of the committed text holds, or a prefix that the next
                # context round completes (counted in context_rounds; tests assert how many)
                assert runner.cache.length(r.rid_int) <= len(r.origin_input_ids) + len(r.output_ids)
        rounds += 1


def make_algo(block: int):
    cfg = TriModeConfig(algorithm="NemotronTriMode", algorithm_config={"default_mode": "ar"},
                     block_size=block, mask_id=100, max_running_requests=64,
                     first_done_first_out_mode=False, requires_separate_context_encoding=True)
    return NemotronTriMode(cfg)


@pytest.fixture(scope="module")
def core64(ckpt_dirs):
    return load_model(ckpt_dirs["s0_lora"], dtype=torch.float64)


def test_each_mode_matches_core_and_modes_mix_in_one_batch(core64):
    prompts = random_prompts(24, seed=41, vocab=512)
    max_new = [random.Random(i).randint(1, 14) for i in range(24)]
    modes = [SERVED[i % 4] for i in range(24)]
    want = generate(core64, [Request(p, m, DecodeParams(max_new_tokens=n))
                             for p, m, n in zip(prompts, modes, max_new)])
    algo, runner = make_algo(core64.config.block_size), FakeRunner(core64)
    reqs = [make_req(i, p, m, n) for i, (p, m, n) in enumerate(zip(prompts, modes, max_new))]
    serve(algo, runner, reqs, core64.config.eos_token_id)
    for r, w, m in zip(reqs, want, modes):
        assert r.output_ids == w.output_ids, (m, r.rid)
    # linear_spec drafts with the LoRA, in the same forwards as every other row's pass
    assert ("step", "rows") in runner.model.causal_log
    for r, w, m in zip(reqs, want, modes):
        st = r.nld.stats
        assert st.mode == m
        # the server runs core's passes exactly: same forwards, cycles and acceptance
        assert (st.forwards, st.cycles) == (w.forwards, w.cycles), (m, r.rid)
        if w.acceptance_length is not None:
            assert st.cycle_tokens / st.cycles == pytest.approx(w.acceptance_length)
        assert r.context_rounds == 1 and st.reprefills == 0      # the prompt only: no re-encode
        if m in ("ar", "quadratic_spec"):      # one pass and one round per token / cycle
            assert st.rounds in (max(1, st.forwards), st.forwards + 1), (m, st)
        if m == "linear_spec":                 # draft + verify; a round may end between them
            assert st.forwards == 2 * st.cycles and st.rounds <= 2 * st.cycles + 1
    # each step's head ran only for the rows read: a quadratic row's R heads + the accepted row's
    # B - 1 masks, a bidirectional row's masks, a causal row at most its tokens
    b = core64.config.block_size
    for step in runner.passes:
        start, bound, exact = 0, 0, 0
        for spec in step["rows"]:
            ids = step["ids"][start:start + spec.q_len]
            start += spec.q_len
            if spec.mask.kind == MaskKind.QUADRATIC:
                exact += spec.q_len // (b + 1) + b - 1
            elif spec.mask.kind == MaskKind.BIDIRECTIONAL:
                exact += ids.count(100)
            else:
                bound += spec.q_len
        assert exact <= step["head_rows"] <= exact + bound, step
    carried = sum(len(s_["ids"]) for s_ in runner.passes)
    assert sum(s_["head_rows"] for s_ in runner.passes) < carried


def test_self_spec_and_ar_are_lossless_with_eos_mid_block(core64):
    m = load_model.__globals__["NLDModel"](core64.config).double()
    m.load_state_dict(core64.state_dict())
    m.set_lora([(l.self_attn.lora_A, l.self_attn.lora_B) for l in core64.encoder.layers],
               core64.encoder.layers[0].self_attn.lora_scale)
    with torch.no_grad():
        m.diffusion_head.weight[core64.config.eos_token_id] *= 3.0
    prompts = random_prompts(30, seed=43, vocab=512)
    want = generate(m, [Request(p, "ar", DecodeParams(max_new_tokens=20)) for p in prompts])
    assert sum(w.finish_reason == "stop" for w in want) >= 5
    for mode in ("linear_spec", "quadratic_spec", "diffusion"):
        algo, runner = make_algo(m.config.block_size), FakeRunner(m)
        reqs = [make_req(i, p, mode, 20) for i, p in enumerate(prompts)]
        serve(algo, runner, reqs, m.config.eos_token_id)
        if mode != "diffusion":
            assert [r.output_ids for r in reqs] == [w.output_ids for w in want]
        else:
            core_diff = generate(m, [Request(p, "diffusion", DecodeParams(max_new_tokens=20))
                                     for p in prompts])
            assert [r.output_ids for r in reqs] == [w.output_ids for w in core_diff]


def test_aborts_do_not_disturb_other_requests(core64):
    prompts = random_prompts(12, seed=47, vocab=512)
    modes = [SERVED[i % 4] for i in range(12)]
    want = generate(core64, [Request(p, mo, DecodeParams(max_new_tokens=12))
                             for p, mo in zip(prompts, modes)])
    algo, runner = make_algo(core64.config.block_size), FakeRunner(core64)
    reqs = [make_req(i, p, mo, 12) for i, (p, mo) in enumerate(zip(prompts, modes))]
    rng = random.Random(5)
    serve(algo, runner, reqs, core64.config.eos_token_id,
          abort_at=lambda rnd, r: rnd > 0 and rng.random() < 0.1)
    aborted = [r for r in reqs if getattr(r, "aborted", False)]
    assert 0 < len(aborted) < len(reqs)
    for r, w in zip(reqs, want):
        if getattr(r, "aborted", False):
            assert r.output_ids == w.output_ids[: len(r.output_ids)]
        else:
            assert r.output_ids == w.output_ids


def test_sampled_requests_are_seeded_and_valid(core64):
    prompts = random_prompts(6, seed=53, vocab=512)
    outs = []
    for _ in range(2):
        algo, runner = make_algo(core64.config.block_size), FakeRunner(core64)
        reqs = [make_req(i, p, SERVED[i % 4], 10, temperature=0.8) for i, p in enumerate(prompts)]
        for r in reqs:
            r.sampling_params.sampling_seed = 1234 + r.rid_int
        serve(algo, runner, reqs, core64.config.eos_token_id)
        outs.append([r.output_ids for r in reqs])
        assert all(100 not in o for o in outs[-1])
    assert outs[0] == outs[1]


def test_validate_request_names_the_field(core64):
    cfg = make_algo(core64.config.block_size).config     # the server defaults
    bad = [("decode_mode", make_req(0, [1], "turbo", 4)),
           ("threshold", make_req(0, [1], "diffusion", 4, threshold=1.5)),
           ("block_length", make_req(0, [1], "diffusion", 4, block_length=3))]
    for field, req in bad:
        msg = cfg.validate_request(req)
        assert msg is not None and field in msg
    req = make_req(0, [1], "ar", 4)
    req.return_logprob = True
    assert cfg.validate_request(req) is None           # output logprobs: honoured
    req.logprob = SimpleNamespace(top_logprobs_num=0, token_ids_logprob=[3])
    assert cfg.validate_request(req) is None           # chosen ids: honoured


def _count_parses(monkeypatch) -> list:
    """Every call of ``params.parse``: the counter replaces the function under every name a
    plugin module binds it to (``from .params import parse``), so a second call site anywhere
    in the plugin is counted too."""
    import sys
    from nemotron_sglang.sglang_plugin import params as params_module
    real, calls = params_module.parse, []

    def counted(*a, **k):
        calls.append(a)
        return real(*a, **k)
    bound = [name for name, mod in list(sys.modules.items())
             if name.startswith("nemotron_sglang.") and getattr(mod, "parse", None) is real]
    for name in bound:
        monkeypatch.setattr(sys.modules[name], "parse", counted)
    assert "nemotron_sglang.sglang_plugin.server_config" in bound, bound
    return calls


def test_the_scheduler_parses_a_request_once(monkeypatch):
    """validate_request's parse is carried on ``req.nld`` to the algorithm, which completes that
    state and never parses again; a request the algorithm sees unvalidated is parsed there,
    once; a refused one carries nothing."""
    algo = make_algo(4)
    calls = _count_parses(monkeypatch)
    req = make_req(0, [1, 2, 3], "linear_spec", 8, threshold=0.5)
    assert algo.config.validate_request(req) is None
    assert len(calls) == 1
    nld = req.nld
    assert not nld.started and nld.params.mode == "linear_spec" and nld.params.threshold == 0.5
    assert algo.request(req) is nld and nld.started and nld.strategy.name == "linear_spec"
    assert algo.request(req) is nld                  # every later round, a re-prefill too
    assert len(calls) == 1
    direct = make_req(0, [1, 2, 3], "linear_spec", 8, threshold=0.5)   # never validated
    assert algo.request(direct).started and len(calls) == 2
    assert algo.request(direct) is direct.nld and len(calls) == 2
    assert (direct.nld.params, direct.nld.seed) == (nld.params, nld.seed)    # the same state
    bad = make_req(1, [1], "turbo", 4)
    assert algo.config.validate_request(bad) is not None
    assert getattr(bad, "nld", None) is None


def test_served_requests_are_parsed_once_through_re_prefills(core64, monkeypatch):
    """The whole lifecycle (validate, context round, canvas rounds, a re-prefill after core's
    state stopped early): one parse per request."""
    prompts = random_prompts(4, seed=61, vocab=512)
    algo, runner = make_algo(core64.config.block_size), FakeRunner(core64)
    reqs = [make_req(i, p, SERVED[i % 4], 8) for i, p in enumerate(prompts)]
    calls = _count_parses(monkeypatch)

    def stop_core_early(rnd, active):
        for r in active:
            if rnd == 1 and not r.finished:
                r.nld.state.finish_reason = "stop"
    serve(algo, runner, reqs, core64.config.eos_token_id, after_round=stop_core_early)
    assert any(r.nld.stats.reprefills for r in reqs)
    assert len(calls) == len(reqs)


@pytest.mark.parametrize("auto_max_batch,expected", [(8, "auto(linear_spec)"), (2, "auto(ar)")])
def test_auto_speculates_small_rounds_and_runs_ar_in_large_ones(core64, auto_max_batch,
                                                                 expected):
    prompts = random_prompts(4, seed=77, vocab=512)
    want = generate(core64, [Request(p, "ar", DecodeParams(max_new_tokens=9)) for p in prompts])
    cfg = TriModeConfig(algorithm="NemotronTriMode",
                     algorithm_config={"default_mode": "ar", "auto_max_batch": auto_max_batch},
                     block_size=core64.config.block_size, mask_id=100, max_running_requests=64,
                     first_done_first_out_mode=False, requires_separate_context_encoding=True)
    algo, runner = NemotronTriMode(cfg), FakeRunner(core64)
    reqs = [make_req(i, p, "auto", 9) for i, p in enumerate(prompts)]   # 4 per round
    serve(algo, runner, reqs, core64.config.eos_token_id)
    for r, w in zip(reqs, want):
        assert r.output_ids == w.output_ids          # either choice is lossless at T = 0
        assert r.nld.stats.reported_mode.startswith(expected[:-1]), r.nld.stats.auto_rounds


@pytest.mark.parametrize("table,first", [
    ("flat", "linear_spec/4"),   # forwards cost the same whatever they carry: the largest block
    ("steep", "ar"),             # cost grows with every token: speculation never pays
])
def test_auto_with_a_cost_table_picks_the_block_by_load(core64, table, first):
    """With a cost table (YAML ``cost_model``) auto runs each round at the block of highest
    expected rate: the first round at the prior acceptance (0.8), later ones at each request's
    own (low on this random checkpoint, so "flat" may turn to ar); a request that set
    block_length keeps it or runs ar; outputs stay AR's."""
    rows, blocks = [1, 2, 4, 8], [1, 2, 4]
    cost = {"flat": lambda r, b: 5.0, "steep": lambda r, b: 1.0 * r * b}[table]
    cfg = TriModeConfig(algorithm="NemotronTriMode", block_size=core64.config.block_size,
                     algorithm_config={"default_mode": "ar", "cost_model": {
                         "rows": rows, "blocks": blocks,
                         "ms": [[cost(r, b) for b in blocks] for r in rows]}},
                     mask_id=100, max_running_requests=64, first_done_first_out_mode=False,
                     requires_separate_context_encoding=True)
    prompts = random_prompts(5, seed=78, vocab=512)
    want = generate(core64, [Request(p, "ar", DecodeParams(max_new_tokens=12)) for p in prompts])
    algo, runner = NemotronTriMode(cfg), FakeRunner(core64)
    reqs = [make_req(i, p, "auto", 12) for i, p in enumerate(prompts[:4])]
    reqs.append(make_req(4, prompts[4], "auto", 12, block_length=2))
    serve(algo, runner, reqs, core64.config.eos_token_id)
    for r, w in zip(reqs, want):
        assert r.output_ids == w.output_ids
    for r in reqs[:4]:
        assert next(iter(r.nld.stats.auto_rounds)) == first, r.nld.stats.auto_rounds
        assert set(r.nld.stats.auto_rounds) <= {"linear_spec/4", "linear_spec/2", "ar"}
    if table == "steep":
        assert all(set(r.nld.stats.auto_rounds) == {"ar"} for r in reqs)
        assert reqs[0].nld.stats.block_length == 1
    assert set(reqs[4].nld.stats.auto_rounds) <= {"linear_spec/2", "ar"}
    with pytest.raises(ValueError, match="cost_model"):
        NemotronTriMode(TriModeConfig(algorithm="NemotronTriMode", block_size=4, mask_id=100,
                                   algorithm_config={"cost_model": {"rows": [1]}},
                                   max_running_requests=4, first_done_first_out_mode=False,
                                   requires_separate_context_encoding=True))


@pytest.mark.parametrize("block", [1, 2, 4])
def test_request_block_below_the_server_block_matches_core(core64, block):
    """block_length < the server's B: bidirectional passes leave the B-slot canvas for a custom
    pass of exactly ``block`` tokens; every mode still equals core at that block."""
    assert core64.config.block_size >= block
    prompts = random_prompts(8, seed=90 + block, vocab=512)
    modes = [SERVED[i % 4] for i in range(8)]
    want = generate(core64, [Request(p, m, DecodeParams(max_new_tokens=10, block_length=block))
                             for p, m in zip(prompts, modes)])
    algo, runner = make_algo(core64.config.block_size), FakeRunner(core64)
    reqs = [make_req(i, p, m, 10, block_length=block) for i, (p, m) in enumerate(zip(prompts, modes))]
    serve(algo, runner, reqs, core64.config.eos_token_id)
    for r, w, m in zip(reqs, want, modes):
        assert r.output_ids == w.output_ids, (m, r.rid)
        if m == "linear_spec":
            assert r.nld.stats.cycles > 0
    # linear_spec drafts with the LoRA (block 1 drafts nothing: plain AR)
    assert any(e[1] == "rows" for e in runner.model.causal_log) == (block > 1)


def test_a_stop_only_core_knows_reseeds_from_a_context_pass(core64):
    """If core's state finishes where SGLang goes on (a stop rule only one side applies), the
    next round returns what the state still holds without KV, or (nothing held) drops the last
    token's KV (``RESEED``); either way a context pass follows and starts a fresh state: the
    request continues exactly as AR would, one re-prefill counted."""
    prompts = random_prompts(4, seed=61, vocab=512)
    for mode in ("ar", "linear_spec", "quadratic_spec", "diffusion"):
        want = generate(core64, [Request(p, mode, DecodeParams(max_new_tokens=12))
                                 for p in prompts])
        algo, runner = make_algo(core64.config.block_size), FakeRunner(core64)
        reqs = [make_req(i, p, mode, 12) for i, p in enumerate(prompts)]

        def stop_core_early(rnd, active):
            for r in active:
                if rnd == 1 and not r.finished:
                    r.nld.state.finish_reason = "stop"      # core alone believes it is done
        serve(algo, runner, reqs, core64.config.eos_token_id, after_round=stop_core_early)
        for r in reqs:
            assert r.finished and r.nld.stats.reprefills == r.context_rounds - 1, mode
        assert any(r.nld.stats.reprefills for r in reqs), mode
        assert (mode == "diffusion") == any(r.nld.reseeds for r in reqs)   # nothing held
        if mode != "diffusion":      # a re-seeded diffusion block starts at another offset
            assert [r.output_ids for r in reqs] == [w.output_ids for w in want], mode


def test_ignore_eos_decodes_past_eos_like_ar(core64):
    m = load_model.__globals__["NLDModel"](core64.config).double()
    m.load_state_dict(core64.state_dict())
    with torch.no_grad():
        m.diffusion_head.weight[core64.config.eos_token_id] *= 3.0
    prompts = random_prompts(12, seed=67, vocab=512)
    stops = generate(m, [Request(p, "ar", DecodeParams(max_new_tokens=16)) for p in prompts])
    assert any(w.finish_reason == "stop" for w in stops)
    for mode in ("ar", "linear_spec"):
        algo, runner = make_algo(m.config.block_size), FakeRunner(m)
        reqs = [make_req(i, p, mode, 16) for i, p in enumerate(prompts)]
        for r in reqs:
            r.sampling_params.ignore_eos = True
        serve(algo, runner, reqs, eos=-1)              # SGLang does not stop at EOS either
        for r, w in zip(reqs, stops):
            assert len(r.output_ids) == 16 and r.output_ids[:len(w.output_ids)] == w.output_ids
            assert r.nld.stats.reprefills == 0


def test_rounds_read_the_host_once_per_pass(core64, monkeypatch):
    """Outside the forwards (the model's own reads), a context round reads the host once (every
    seed, decided on the logits' device) and a canvas round once per step (every row's decision;
    its rows' canvas starts and pool rows are SGLang's host values); each read moves O(rows)
    elements, never a logits row. Mixed modes, greedy and sampled."""
    algo, runner = make_algo(4), FakeRunner(core64)
    reads = HostReads()
    real_step, real_forward, real_run = algo.step_forward, runner.forward, algo.run
    log = []

    def paused(fn):
        def wrapped(*a, **k):
            with reads.paused():
                return fn(*a, **k)
        return wrapped

    def counted_run(model_runner, fb, *a, **k):
        before, steps = len(reads.calls), len(runner.passes)
        with reads:
            out = real_run(model_runner, fb, *a, **k)
        log.append((fb.forward_mode.is_dllm_extend(), reads.calls[before:],
                    runner.passes[steps:]))
        return out

    monkeypatch.setattr(algo, "step_forward", paused(real_step))
    monkeypatch.setattr(runner, "forward", paused(real_forward))
    monkeypatch.setattr(algo, "run", counted_run)
    prompts = random_prompts(8, seed=random.randrange(1 << 20), vocab=512)
    reqs = [make_req(i, p, SERVED[i % 4], 12, temperature=0.0 if i < 4 else 0.9)
            for i, p in enumerate(prompts)]
    serve(algo, runner, reqs, eos=core64.config.eos_token_id)
    vocab = core64.config.vocab_size
    assert any(c for c, _, _ in log) and any(not c for c, _, _ in log)
    for canvas, calls, passes in log:
        assert [n for n, _ in calls] == ["tolist"] * (len(passes) if canvas else 1), calls
        for (_, moved), p in zip(calls, passes):
            assert moved <= 5 * p["head_rows"] < vocab, (moved, p["head_rows"])
