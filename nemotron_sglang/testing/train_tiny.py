"""Train the tiny NLD fixture on the rule corpus: base model (AR + block diffusion), then the LoRA drafter.

One responsibility: turn ``corpus.documents`` into an NLD-format checkpoint directory
(``config.json`` via :func:`core.weights.save_checkpoint`, tokenizer files, ``linear_spec_lora/``).

The objective (the dual-stream pass, its mask, the noise and the loss) is
:mod:`train_objective`'s; the data windows are :mod:`train_data`'s.

The drafter (model_spec §3.4): rank-r LoRA on every layer's ``o_proj``, active on the noisy
stream only, base frozen. Each block is [seed, mask x (B-1)] over the clean text; the target of
slot j is the frozen model's greedy AR token for that slot (argmax of the clean-stream logit at
the previous position). Along the text, the greedy path equals the text up to the first slot
where that argmax differs, so CE is taken on the accepted prefix plus the first rejected slot
(the slots after it follow a path the text does not show).

Chat (``chat_rows`` > 0): every base step also takes ``chat_rows`` windows of ``chat_len``
tokens of packed conversations (``chat_stream``: ``chat_corpus.conversations(seed * 1000 + 2,
chat_docs)`` rendered by the chat template as SGLang's chat route renders them), with the same
loss added; the drafter's phase alternates raw and conversation batches. ``chat_aligned`` of
those windows end in a block that opens on a reply (``reply_starts``: the first generated token
after the generation prompt), the layout a decoder's canvas has when it answers a chat request:
its first slot the AR seed, the rest masked (the ``p_draft`` pattern) or partly committed; that
block's diffusion loss is scaled by ``chat_reply_weight``, and with ``chat_reply_uniform_t`` its
mask ratio is uniform (``train_objective.ReplyBlocks``). ``reply_rows`` more windows a step, each
``reply_len`` tokens of conversation ending in such a block, spend the step's compute on replies
(a direct question's whole conversation fits; a call's tool list may be cut, which the full
windows keep showing). ``init`` continues from a checkpoint's weights (its tokenizer must be the
corpus tokenizer up to reserved names).

Data: the training stream is ``corpus.documents(seed * 1000 + 1, data_docs)`` (below
``corpus.EVAL_SEED_BASE`` for training seeds 0..998, which :func:`train` enforces; the
tokenizer's text is ``corpus.documents(TOKENIZER_SEED, TOKENIZER_DOCS)``); each document is
``[bos]? + text + [eos]`` (bos with probability 1/2), documents are packed, and half the windows
start at a document start (position 0), half at a random offset. Everything is deterministic in
``seed`` (torch and ``random`` seeded; one thread recommended for bit-reproducibility). RoPE:
YaRN with factor 8 and original_max_position_embeddings 512 (> the training length, so the
llama-4 query scale is 1 everywhere we train and evaluate); max_position_embeddings 4096.
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
from ..core.model import NLDModel
from ..core.tokenizer import MASK_ID, build_tokenizer, save_tokenizer
from ..core.weights import LORA_DIR, save_checkpoint, save_lora
from . import corpus
from .train_data import Stream, chat_stream
from .train_objective import ReplyBlocks, dense_forward, dual_mask, pass_loss, pick_block

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
    chat_aligned: float = 0.0   # share of chat rows ending in a block that opens on a reply
    chat_reply_weight: float = 1.0   # that block's diffusion loss scaled by this
    chat_reply_uniform_t: bool = False   # that block's mask ratio uniform (else Beta(2, 1))
    reply_rows: int = 0         # more rows per step: short windows ending in a reply's block
    reply_len: int = 96         # their length (a direct question's conversation is ~30-60 tokens)
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
    reply_masks = ({b: dual_mask(tc.reply_len, b) for b, _ in tc.block_sizes}
                   if chat is not None and tc.reply_rows else None)

    def conversation_loss(block: int, n: int, length: int, aligned: float, by_block: dict):
        """Backpropagate the loss of ``n`` conversation windows of ``length`` (``aligned`` of
        them ending in a reply block) and return it."""
        at = (length // block - 1) * block
        rows, flags = chat.draw(g, n, length + 1, aligned, at)
        reply = ReplyBlocks(flags, at, tc.chat_reply_weight, tc.chat_reply_uniform_t)
        loss = pass_loss(model, rows[:, :-1], rows[:, 1:], block, tc.p_draft, tc.dlm_weight,
                         by_block[block], gen, reply)[0]
        loss.backward()
        return loss

    t0, last_save = time.time(), time.time()
    c0 = time.process_time()
    hist = []
    ema = None
    for step in range(tc.steps):
        block = pick_block(g, tc.block_sizes)
        clean = stream.batch(g, tc.batch, L + 1)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, tc.steps, tc.warmup, tc.lr, tc.min_lr)
        opt.zero_grad(set_to_none=True)
        loss, ar, dlm = pass_loss(model, clean[:, :L], clean[:, 1:], block, tc.p_draft,
                                  tc.dlm_weight, masks[block], gen)
        loss.backward()
        chat_loss = reply_loss = None
        if chat_masks is not None:
            chat_loss = conversation_loss(block, tc.chat_rows, tc.chat_len, tc.chat_aligned,
                                          chat_masks)
        if reply_masks is not None:
            reply_loss = conversation_loss(block, tc.reply_rows, tc.reply_len, 1.0, reply_masks)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 25 == 0 or step == tc.steps - 1:
            rec = {"phase": "base", "step": step, "loss": round(loss.item(), 4),
                   "ar": round(ar.item(), 4), "dlm": round(dlm.item(), 4),
                   "ema": round(ema, 4), "block": block, "lr": round(opt.param_groups[0]["lr"], 6),
                   **({} if chat_loss is None else {"chat": round(chat_loss.item(), 4)}),
                   **({} if reply_loss is None else {"reply": round(reply_loss.item(), 4)}),
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
        block = pick_block(g, tc.block_sizes)
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
