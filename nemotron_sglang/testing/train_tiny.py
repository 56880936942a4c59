"""Train the tiny NLD fixture on the rule corpus: base model (AR + block diffusion), then the LoRA drafter.

One responsibility: turn ``corpus.documents`` into an NLD-format checkpoint directory
(``config.json`` via :func:`core.weights.save_checkpoint`, tokenizer files, ``linear_spec_lora/``).

Training runs core's :class:`NLDModel` parameters through a dense, batched forward of its own
(:func:`dense_forward`; the serving forward is paged and ``no_grad``). Every sample is the
dual-stream sequence of model_spec §2.3, length 2L = [noisy x_t ; clean x], both halves at
positions 0..L-1:

* clean -> clean: token-causal (gives the AR next-token loss in the same pass);
* noisy -> noisy: same block only (bidirectional within the block);
* noisy -> clean: clean blocks strictly before the query's block;
* clean -> noisy: none.

Loss = AR CE (clean stream, next token) + ``dlm_weight`` x block-diffusion loss (noisy stream,
CE at masked slots weighted by 1/t, summed and divided by the number of noisy tokens). The
block size of a step is drawn from {32: 0.6, 16: 0.2, 8: 0.2} (decoders run at 8, 16, 32). The
mask ratio is biased toward heavy masking: per block, with probability ``p_draft`` the block
is the drafting pattern [clean slot 0, masks after it] (what linear/quadratic drafting and the
first diffusion step see), otherwise every slot is masked with probability t ~ Beta(2, 1)
clipped to [0.05, 1] (at least one mask per block).

The drafter (model_spec §3.4): rank-r LoRA on every layer's ``o_proj``, active on the noisy
stream only, base frozen. Each block is [seed, mask x (B-1)] over the clean text; the target of
slot j is the frozen model's greedy AR token for that slot (argmax of the clean-stream logit at
the previous position). Along the text, the greedy path equals the text up to the first slot
where that argmax differs, so CE is taken on the accepted prefix plus the first rejected slot
(the slots after it follow a path the text does not show).

Chat (``chat_rows`` > 0): every base step also takes ``chat_rows`` windows of ``chat_len``
tokens of packed conversations (``chat_stream``: ``chat_corpus.conversations(seed * 1000 + 2,
chat_docs)`` rendered by the chat template as SGLang's chat route renders them), with the same
loss added; the drafter's phase alternates raw and conversation batches. ``init`` continues from
a checkpoint's weights (its tokenizer must be the corpus tokenizer up to reserved names).

Data: the training stream is ``corpus.documents(seed * 1000 + 1, data_docs)`` (below
``corpus.EVAL_SEED_BASE`` for training seeds 0..998, which :func:`train` enforces; the
tokenizer's text is ``corpus.documents(TOKENIZER_SEED, TOKENIZER_DOCS)``); each document is
``[bos]? + text + [eos]`` (bos with probability 1/2), documents are packed, and half the windows start at a document start (position 0), half at a
random offset. Everything is deterministic in ``seed`` (torch and ``random`` seeded; one thread
recommended for bit-reproducibility). RoPE: YaRN with factor 8 and
original_max_position_embeddings 512 (> the training length, so the llama-4 query scale is 1
everywhere we train and evaluate); max_position_embeddings 4096.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from ..core.config import NLDConfig, RopeParameters
from ..core.lora import lora_delta
from ..core.model import NLDModel
from ..core.tokenizer import BOS_ID, EOS_ID, MASK_ID, build_tokenizer, save_tokenizer
from ..core.weights import LORA_DIR, save_checkpoint, save_lora
from . import corpus

TOKENIZER_DOCS = 20000
LORA_RESERVE_S = 480.0      # of a --minutes deadline, kept for the LoRA phase
TOKENIZER_SEED = 7          # corpus seed of the tokenizer's training text (< EVAL_SEED_BASE)


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 2000
    batch: int = 16
    seq_len: int = 160
    lr: float = 3e-3
    min_lr: float = 1e-4
    warmup: int = 60
    weight_decay: float = 0.05
    dlm_weight: float = 1.0
    p_draft: float = 0.4
    block_sizes: tuple = ((32, 0.6), (16, 0.2), (8, 0.2))
    hidden: int = 192
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 48
    intermediate: int = 512
    vocab: int = 640
    block_size: int = 32
    lora_steps: int = 300
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_lr: float = 2e-3
    save_every_s: float = 600.0
    dtype: str = "bfloat16"
    data_docs: int = 200000
    chat_rows: int = 0          # rows of rendered conversations per step (chat_corpus), 0 = none
    chat_len: int = 320         # their length (a conversation offering two tools is ~300 tokens)
    chat_docs: int = 60000
    chat_weights: str | None = None   # kinds' draw weights, "add=3,sequence=3" (None: uniform)
    init: str | None = None     # continue from this checkpoint's weights instead of a fresh init

    def model_config(self) -> NLDConfig:
        return NLDConfig(
            hidden_size=self.hidden, num_hidden_layers=self.layers,
            num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            head_dim=self.head_dim, intermediate_size=self.intermediate, vocab_size=self.vocab,
            max_position_embeddings=4096,
            rope_parameters=RopeParameters(rope_theta=10000.0, factor=8.0,
                                           original_max_position_embeddings=512),
            block_size=self.block_size, torch_dtype=self.dtype,
            dlm_loss_weight=self.dlm_weight, ar_loss_weight=1.0)


# ---------------------------------------------------------------- data
class Stream:
    """Packed token stream of training documents with their start offsets."""

    def __init__(self, tok, seed: int, n_docs: int, docs: list[str] | None = None,
                 bos_share: float = 0.5):
        """``docs`` (default: ``corpus.documents(seed * 1000 + 1, n_docs)``), each
        ``[bos]? text [eos]`` with bos at ``bos_share``."""
        if docs is None:
            docs = corpus.documents(seed * 1000 + 1, n_docs)
        r = random.Random(seed)
        ids: list[int] = []
        starts: list[int] = []
        for enc in tok.encode_batch(docs, add_special_tokens=False):
            starts.append(len(ids))
            if r.random() < bos_share:
                ids.append(BOS_ID)
            ids.extend(enc.ids)
            ids.append(EOS_ID)
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.starts = starts

    def batch(self, g: random.Random, n: int, length: int) -> torch.Tensor:
        rows = []
        limit = len(self.ids) - length - 1
        for _ in range(n):
            if g.random() < 0.5:
                s = self.starts[g.randrange(len(self.starts) - 50)]
            else:
                s = g.randrange(limit)
            rows.append(self.ids[s:s + length])
        return torch.stack(rows)


def chat_stream(tok, seed: int, n: int, weights: str | None = None) -> Stream:
    """``n`` conversations of ``chat_corpus`` (seed ``seed * 1000 + 2``, the kinds drawn with
    ``weights``, ``chat_corpus.kind_weights``) rendered by the chat
    template exactly as SGLang's chat route renders them (Hugging Face's ``apply_chat_template``;
    the template writes the bos), each closed by its last ``<|im_end|>`` (= eos), packed."""
    from transformers import PreTrainedTokenizerFast

    from ..core.tokenizer import CHAT_TEMPLATE
    from . import chat_corpus

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=CHAT_TEMPLATE)
    texts = []
    for c in chat_corpus.conversations(seed * 1000 + 2, n,
                                        chat_corpus.kind_weights(weights)):
        text = hf.apply_chat_template(c["messages"], tools=c["tools"], tokenize=False)
        texts.append(text.removesuffix("<|im_end|>\n"))     # the stream appends the eos
    return Stream(tok, seed, n, docs=texts, bos_share=0.0)


# ---------------------------------------------------------------- model
def dual_mask(length: int, block: int) -> torch.Tensor:
    """Bool [2L, 2L], True = may attend; rows/cols 0..L-1 noisy, L..2L-1 clean."""
    i = torch.arange(length)
    bi = i // block
    causal = i[None, :] <= i[:, None]
    same_block = bi[None, :] == bi[:, None]
    earlier_block = bi[None, :] < bi[:, None]
    top = torch.cat([same_block, earlier_block], dim=1)            # noisy queries
    bottom = torch.cat([torch.zeros_like(causal), causal], dim=1)  # clean queries
    return torch.cat([top, bottom], dim=0)


def dense_forward(model: NLDModel, ids: torch.Tensor, positions: torch.Tensor,
                  mask: torch.Tensor, lora: list | None = None, lora_scale: float = 0.0,
                  lora_rows: torch.Tensor | None = None) -> torch.Tensor:
    """ids [N, T], positions [T], mask [T, T] bool -> logits [N, T, V] (with autograd).

    ``lora``: per layer (A [r, q], B [h, r]) added to o_proj at token rows ``lora_rows`` [T] bool.
    """
    cfg = model.config
    n, t = ids.shape
    x = model.encoder.embed_tokens(ids)
    pos = positions.repeat(n)
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    for li, layer in enumerate(model.encoder.layers):
        att = layer.self_attn
        h = layer.input_layernorm(x).reshape(n * t, -1)
        q = att.q_proj(h).view(n * t, cfg.num_attention_heads, cfg.head_dim)
        k = att.k_proj(h).view(n * t, cfg.num_key_value_heads, cfg.head_dim)
        v = att.v_proj(h).view(n * t, cfg.num_key_value_heads, cfg.head_dim)
        q, k = model.rotary.apply(q, k, pos)
        q = q.view(n, t, -1, cfg.head_dim).transpose(1, 2)
        k = k.view(n, t, -1, cfg.head_dim).transpose(1, 2).repeat_interleave(group, dim=1)
        v = v.view(n, t, -1, cfg.head_dim).transpose(1, 2).repeat_interleave(group, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=att.scale)
        o = o.transpose(1, 2).reshape(n, t, cfg.q_size)
        y = att.o_proj(o)
        if lora is not None:
            a, b = lora[li]
            y = y + lora_delta(o, a, b, lora_scale, lora_rows[None, :]).to(y.dtype)
        x = x + y
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.diffusion_head(model.encoder.norm(x))


def _pick_block(g: random.Random, sizes) -> int:
    u, acc = g.random(), 0.0
    for b, p in sizes:
        acc += p
        if u < acc:
            return b
    return sizes[-1][0]


def noise(clean: torch.Tensor, block: int, p_draft: float, gen: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked copy of clean [N, L], the bool mask and the per-token mask ratio t."""
    n, length = clean.shape
    nb = length // block
    draft = torch.rand(n, nb, generator=gen) < p_draft
    # Beta(2,1) by inverse CDF (sqrt of uniform), with our generator for determinism
    t = torch.rand(n, nb, generator=gen).sqrt().clamp(0.05, 1.0)
    m = torch.rand(n, nb, block, generator=gen) < t[..., None]
    # at least one mask per block
    force = torch.randint(0, block, (n, nb), generator=gen)
    m.scatter_(2, force[..., None], True)
    draft_pat = torch.ones(block, dtype=torch.bool)
    draft_pat[0] = False
    m = torch.where(draft[..., None], draft_pat.expand(n, nb, block), m)
    t = torch.where(draft, torch.full_like(t, (block - 1) / block), t)
    m = m.reshape(n, length)
    tt = t[..., None].expand(n, nb, block).reshape(n, length)
    noisy = torch.where(m, torch.full_like(clean, MASK_ID), clean)
    return noisy, m, tt


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, p)))


def _log(path: Path | None, rec: dict, quiet: bool) -> None:
    line = json.dumps(rec)
    if path is not None:
        with open(path, "a") as f:
            f.write(line + "\n")
    if not quiet:
        print(line, flush=True)


def _state(model: NLDModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_model(out: Path, model: NLDModel, tok, dtype: str) -> None:
    save_checkpoint(out, model.config, _state(model), dtype=dtype)
    save_tokenizer(tok, out)


def _pass_loss(model: NLDModel, x: torch.Tensor, y: torch.Tensor, block: int, p_draft: float,
               dlm_weight: float, mask: torch.Tensor, gen: torch.Generator):
    """(loss, ar, dlm) of one batch of clean rows ``x`` [n, L] with next tokens ``y``."""
    L, vocab = x.shape[1], model.config.vocab_size
    positions = torch.cat([torch.arange(L), torch.arange(L)])
    noisy, m, t = noise(x, block, p_draft, gen)
    logits = dense_forward(model, torch.cat([noisy, x], dim=1), positions, mask)
    ar = F.cross_entropy(logits[:, L:].reshape(-1, vocab), y.reshape(-1))
    ce = F.cross_entropy(logits[:, :L].reshape(-1, vocab), x.reshape(-1),
                         reduction="none").view_as(x)
    dlm = (ce * m / t).sum() / x.numel()
    return ar + dlm_weight * dlm, ar, dlm


def train_base(tc: TrainConfig, out: Path | None, tok, stream: Stream, log_path: Path | None,
               quiet: bool = False, deadline: float | None = None,
               chat: Stream | None = None) -> tuple[NLDModel, list]:
    """The base phase; with ``chat`` (and ``tc.chat_rows``) every step also takes a batch of
    ``tc.chat_rows`` conversation windows of ``tc.chat_len`` tokens, its loss added."""
    torch.manual_seed(tc.seed)
    cfg = tc.model_config()
    if tc.init is not None:
        from ..core.weights import load_model
        model = load_model(Path(tc.init), dtype=torch.float32, lora=False)
        if model.config.vocab_size != cfg.vocab_size or model.config.hidden_size != cfg.hidden_size:
            raise ValueError(f"--init {tc.init}: its shape differs from the training config")
        cfg = model.config
    else:
        model = NLDModel(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 2:
                    p.normal_(0.0, cfg.initializer_range)
                    if name.endswith(("o_proj.weight", "down_proj.weight")):
                        p.mul_(1.0 / math.sqrt(2 * cfg.num_hidden_layers))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=tc.lr, betas=(0.9, 0.95))
    g = random.Random(tc.seed + 1)
    gen = torch.Generator().manual_seed(tc.seed + 2)
    L = tc.seq_len
    masks = {b: dual_mask(L, b) for b, _ in tc.block_sizes}
    chat_masks = ({b: dual_mask(tc.chat_len, b) for b, _ in tc.block_sizes}
                  if chat is not None and tc.chat_rows else None)
    t0, last_save = time.time(), time.time()
    c0 = time.process_time()
    hist = []
    ema = None
    for step in range(tc.steps):
        block = _pick_block(g, tc.block_sizes)
        clean = stream.batch(g, tc.batch, L + 1)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, tc.steps, tc.warmup, tc.lr, tc.min_lr)
        opt.zero_grad(set_to_none=True)
        loss, ar, dlm = _pass_loss(model, clean[:, :L], clean[:, 1:], block, tc.p_draft,
                                   tc.dlm_weight, masks[block], gen)
        loss.backward()
        chat_loss = None
        if chat_masks is not None:
            rows = chat.batch(g, tc.chat_rows, tc.chat_len + 1)
            chat_loss, _, _ = _pass_loss(model, rows[:, :-1], rows[:, 1:], block, tc.p_draft,
                                         tc.dlm_weight, chat_masks[block], gen)
            chat_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 25 == 0 or step == tc.steps - 1:
            rec = {"phase": "base", "step": step, "loss": round(loss.item(), 4),
                   "ar": round(ar.item(), 4), "dlm": round(dlm.item(), 4),
                   "ema": round(ema, 4), "block": block, "lr": round(opt.param_groups[0]["lr"], 6),
                   **({} if chat_loss is None else {"chat": round(chat_loss.item(), 4)}),
                   "wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
            hist.append(rec)
            _log(log_path, rec, quiet)
        if out is not None and time.time() - last_save > tc.save_every_s:
            model.eval()
            save_model(out, model, tok, tc.dtype)
            model.train()
            last_save = time.time()
            _log(log_path, {"phase": "base", "saved_at_step": step}, quiet)
        if deadline is not None and time.time() > deadline:
            _log(log_path, {"phase": "base", "stopped_at_deadline": step}, quiet)
            break
    model.eval()
    return model, hist


def train_lora(tc: TrainConfig, model: NLDModel, stream: Stream, log_path: Path | None,
               quiet: bool = False, deadline: float | None = None, chat: Stream | None = None
               ) -> tuple[dict[str, torch.Tensor], list]:
    """The drafter's phase; with ``chat``, every other step's batch is conversation windows."""
    cfg = model.config
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(tc.seed + 11)
    r = tc.lora_rank
    lora = []
    for _ in range(cfg.num_hidden_layers):
        a = (torch.randn(r, cfg.q_size, generator=gen) / math.sqrt(cfg.q_size)).requires_grad_()
        b = torch.zeros(cfg.hidden_size, r).requires_grad_()
        lora.append((a, b))
    scale = tc.lora_alpha / r
    opt = torch.optim.AdamW([p for ab in lora for p in ab], lr=tc.lora_lr, weight_decay=0.0)
    g = random.Random(tc.seed + 12)
    L = tc.seq_len
    positions = torch.cat([torch.arange(L), torch.arange(L)])
    rows = torch.cat([torch.ones(L, dtype=torch.bool), torch.zeros(L, dtype=torch.bool)])
    masks = {b: dual_mask(L, b) for b, _ in tc.block_sizes}
    hist = []
    t0, c0 = time.time(), time.process_time()
    for step in range(tc.lora_steps):
        block = _pick_block(g, tc.block_sizes)
        x = (chat if chat is not None and step % 2 else stream).batch(g, tc.batch, L)
        nb = L // block
        slot = torch.arange(L) % block
        noisy = torch.where(slot[None, :] == 0, x, torch.full_like(x, MASK_ID))
        with torch.no_grad():       # frozen teacher: greedy AR token of every slot
            base = dense_forward(model, torch.cat([noisy, x], 1), positions, masks[block])
            greedy = base[:, L:].argmax(-1)                        # predicts position i+1
            target = torch.cat([x[:, :1], greedy[:, :-1]], dim=1)  # greedy token AT position i
            agree = (target == x).view(-1, nb, block)[..., 1:]
            # accepted prefix + first rejected slot: slot j counts if slots 1..j-1 all agree
            ok_before = torch.cumprod(agree.long(), dim=-1)
            use = torch.cat([torch.ones_like(ok_before[..., :1]), ok_before[..., :-1]], dim=-1)
            weight = torch.cat([torch.zeros_like(use[..., :1]), use], dim=-1).view(-1, L).float()
            base_draft = base[:, :L].argmax(-1)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, tc.lora_steps, 20, tc.lora_lr, tc.lora_lr * 0.05)
        logits = dense_forward(model, torch.cat([noisy, x], 1), positions, masks[block],
                               lora=lora, lora_scale=scale, lora_rows=rows)
        ce = F.cross_entropy(logits[:, :L].reshape(-1, cfg.vocab_size), target.reshape(-1),
                             reduction="none").view_as(x)
        loss = (ce * weight).sum() / weight.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == tc.lora_steps - 1:
            with torch.no_grad():
                d = logits[:, :L].argmax(-1)

                def accept(draft):
                    eq = (draft == target).view(-1, nb, block)[..., 1:]
                    return torch.cumprod(eq.long(), -1).sum(-1).float().mean().item()
            rec = {"phase": "lora", "step": step, "loss": round(loss.item(), 4), "block": block,
                   "accept_base": round(accept(base_draft), 3),
                   "accept_lora": round(accept(d), 3),
                   "wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
            hist.append(rec)
            _log(log_path, rec, quiet)
        if deadline is not None and time.time() > deadline:
            _log(log_path, {"phase": "lora", "stopped_at_deadline": step}, quiet)
            break
    tensors = {}
    for n, (a, b) in enumerate(lora):
        p = f"base_model.model.encoder.layers.{n}.self_attn.o_proj."
        tensors[p + "lora_A.weight"] = a.detach().clone()
        tensors[p + "lora_B.weight"] = b.detach().clone()
    return tensors, hist


def _check_same_tokenizer(tok, init: Path) -> None:
    """``--init``'s tokenizer must be this one up to the reserved ids' names (its merges and
    every learned id equal), or the weights would read other tokens."""
    from ..core.tokenizer import NUM_RESERVED, load_tokenizer

    a, b = json.loads(tok.to_str())["model"], json.loads(load_tokenizer(init).to_str())["model"]
    learned = {k: v for k, v in a["vocab"].items() if v >= NUM_RESERVED}
    if a["merges"] != b["merges"] or learned != {k: v for k, v in b["vocab"].items()
                                                 if v >= NUM_RESERVED}:
        raise ValueError(f"--init {init}: its tokenizer differs from the corpus tokenizer")


def build_corpus_tokenizer(vocab: int):
    """The fixture's tokenizer: BPE over corpus text, one token per digit."""
    return build_tokenizer(vocab, corpus.documents(TOKENIZER_SEED, TOKENIZER_DOCS),
                           split_digits=True)


def train(out_dir: str | os.PathLike, tc: TrainConfig, quiet: bool = False,
          minutes: float | None = None) -> dict:
    """Full recipe: tokenizer, base model, checkpoint, LoRA drafter. Returns a summary dict.

    ``minutes`` is a safety deadline only (the schedule is set by ``steps``): the base phase
    stops ``LORA_RESERVE_S`` before it, the LoRA phase at it; a cut run says so in the log.
    """
    if not 0 <= tc.seed * 1000 + 1 < corpus.EVAL_SEED_BASE:
        raise ValueError(f"training seed must be in 0..998 (its corpus seed {tc.seed * 1000 + 1} "
                         f"must stay below the evaluation seeds >= {corpus.EVAL_SEED_BASE})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.jsonl"
    if log_path.exists():
        log_path.unlink()
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    t0, c0 = time.time(), time.process_time()
    deadline = None if minutes is None else t0 + minutes * 60
    base_deadline = None if deadline is None else deadline - LORA_RESERVE_S
    tok = build_corpus_tokenizer(tc.vocab)
    if tc.init is not None:
        _check_same_tokenizer(tok, Path(tc.init))
    stream = Stream(tok, tc.seed, tc.data_docs)
    chat = chat_stream(tok, tc.seed, tc.chat_docs, tc.chat_weights) if tc.chat_rows else None
    _log(log_path, {"phase": "data", "tokens": len(stream.ids), "docs": len(stream.starts),
                    **({} if chat is None else {"chat_tokens": len(chat.ids),
                                                "chat_docs": len(chat.starts)}),
                    "config": dict(vars(tc))}, quiet)
    model, hist = train_base(tc, out, tok, stream, log_path, quiet, base_deadline, chat)
    save_model(out, model, tok, tc.dtype)
    # the LoRA is trained on the weights as saved (rounded to the checkpoint dtype)
    from ..core.weights import load_model
    model = load_model(out, dtype=torch.float32, lora=False)
    base_wall, base_cpu = time.time() - t0, time.process_time() - c0
    tensors, lhist = train_lora(tc, model, stream, log_path, quiet, deadline, chat)
    save_lora(out / LORA_DIR, tensors, tc.lora_rank, tc.lora_alpha, base_model=str(out.name))
    summary = {"base_wall_s": round(base_wall, 1), "base_cpu_s": round(base_cpu, 1),
               "total_wall_s": round(time.time() - t0, 1),
               "total_cpu_s": round(time.process_time() - c0, 1),
               "base_steps_done": hist[-1]["step"] + 1 if hist else 0,
               "lora_steps_done": lhist[-1]["step"] + 1 if lhist else 0,
               "threads": torch.get_num_threads()}
    _log(log_path, {"phase": "done", **summary}, quiet)
    return summary
