"""Tokens per forward of every mode under SGLang's sampling features on the embedded default
(core's decoders, 16 held-out corpus prompts, 64 new tokens, block 32): what a penalty or a
truncated sampler costs self-speculation and diffusion (drafts are proposed before the penalty
counts of the drafts beside them are known, so a strong penalty lowers acceptance; the output is
AR's either way), and under a grammar (SGLang's xgrammar object of a regex, through the
plugin's adapter: self-speculation's verifier is masked row by row, diffusion commits left to
right).

    python benchmarks/tpf_sampling.py
"""

from __future__ import annotations


import torch

from nemotron_sglang.testing.bench import hardware, print_table

from nemotron_sglang.core.decoding import DecodeParams, Request, SamplingRule, generate
from nemotron_sglang.core.tokenizer import encode, load_tokenizer
from nemotron_sglang.core.weights import load_model
from nemotron_sglang.serving.serve import embedded_model
from nemotron_sglang.testing.corpus import examples

from nemotron_sglang.core.modes import DECODE_MODES as MODES
RULES = [("greedy", SamplingRule()),
         ("frequency_penalty 0.5", SamplingRule(frequency_penalty=0.5)),
         ("presence_penalty 0.5", SamplingRule(presence_penalty=0.5)),
         ("repetition_penalty 1.3", SamplingRule(repetition_penalty=1.3)),
         ("T 0.7, top_p 0.9", SamplingRule(temperature=0.7, top_p=0.9)),
         ("T 0.7, top_k 20, min_p 0.05", SamplingRule(temperature=0.7, top_k=20, min_p=0.05))]


GRAMMARS = [("greedy + regex printable ASCII", r"[ -~\n]*"),
            ("greedy + regex digits, commas, spaces", r"[0-9, \n]*")]


def regex_grammar(tokenizer_dir, vocab: int, pattern: str):
    """A fresh grammar of ``pattern`` as the server builds it (xgrammar, SGLang's object)."""
    import xgrammar
    from sglang.srt.constrained.xgrammar_backend import XGrammarGrammar
    from transformers import PreTrainedTokenizerFast

    from nemotron_sglang.core.tokenizer import EOS_ID
    from nemotron_sglang.sglang_plugin.grammar import SGLangGrammar

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_dir / "tokenizer.json"))
    info = xgrammar.TokenizerInfo.from_huggingface(tok, vocab_size=vocab,
                                                   stop_token_ids=[EOS_ID])
    compiled = xgrammar.GrammarCompiler(info).compile_regex(pattern)
    return lambda: SGLangGrammar(XGrammarGrammar(
        xgrammar.GrammarMatcher(compiled, max_rollback_tokens=200), vocab, compiled, None), vocab)


def main() -> None:
    model = load_model(embedded_model(), dtype=torch.float32)
    tok = load_tokenizer(embedded_model())
    prompts = [encode(tok, e["prompt"]) for e in examples(1_000_000, 16)]
    print(f"# {hardware(False)}; embedded default, 16 held-out prompts, 64 new tokens, block 32")
    print("# command: python benchmarks/tpf_sampling.py")
    rows = []
    for name, rule in RULES:
        row = [name]
        for mode in MODES:
            res = generate(model, [Request(p, mode, DecodeParams(
                max_new_tokens=64, temperature=rule.temperature, sampling=rule, seed=i))
                for i, p in enumerate(prompts)])
            row.append(sum(len(r.output_ids) for r in res) / sum(r.forwards for r in res))
        rows.append(row)
    for name, pattern in GRAMMARS:
        fresh = regex_grammar(embedded_model(), model.config.vocab_size, pattern)
        row = [name]
        for mode in MODES:
            res = generate(model, [Request(p, mode, DecodeParams(max_new_tokens=64),
                                           grammar=fresh()) for p in prompts])
            row.append(sum(len(r.output_ids) for r in res) / sum(r.forwards for r in res))
        rows.append(row)
    print_table(["rule", *MODES], rows, markdown=True)


if __name__ == "__main__":
    main()
