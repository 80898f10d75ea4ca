"""The module trained by train/medusa.py: the heads (+ the base with LoRA in medusa2) and their losses.

loss = sum_k decay**k * CE(head_k(h_t), label_{t+k+2}) on assistant tokens; medusa2 adds the base's own next-token
loss and an optional KL to the base without adapters. Works on token batches or on cached features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of tokens that are not trained on


def shifted_targets(labels, position_ids, shifts):
    """labels [B, T] -> [B, T, len(shifts)]: column j at t holds labels[t + shifts[j]] (IGNORE past the end or
    across a packed-sequence boundary, where position_ids do not continue)."""
    B, T = labels.shape
    out = labels.new_full((B, T, len(shifts)), IGNORE)
    for j, s in enumerate(shifts):
        if s >= T:
            continue
        tgt = labels[:, s:]
        if position_ids is not None:
            tgt = tgt.masked_fill(position_ids[:, s:] != position_ids[:, :-s] + s, IGNORE)
        out[:, : T - s, j] = tgt
    return out


def shifted_tokens(input_ids, num):
    """input_ids [B, T] -> [B, T, num]: column j at t holds input_ids[t + j + 1] (0 past the end). The path tokens
    a sequential head reads: head k at t sees the tokens t+1 .. t+k+1 (teacher forcing)."""
    B, T = input_ids.shape
    out = input_ids.new_zeros((B, T, num))
    for j in range(num):
        if j + 1 < T:
            out[:, : T - j - 1, j] = input_ids[:, j + 1 :]
    return out


def ce_stats(logits, target, count=None):
    """-> (mean CE, [loss sum, top-1 hits, top-5 hits, count]) over rows of logits [N, V]. count (default N) may
    exceed N: the other targets (outside a reduced head vocabulary) count as wrong and add no loss."""
    logits = logits.float()
    loss_sum = F.cross_entropy(logits, target, reduction="sum")
    with torch.no_grad():
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hit = top == target[:, None]
        count = target.new_tensor(len(target) if count is None else count)
        stats = [loss_sum.detach(), hit[:, 0].sum(), hit.any(-1).sum(), count]
    return loss_sum / max(len(target), 1), torch.stack(stats).float()


class Trainee(nn.Module):
    """Heads (+ the base, with LoRA in medusa2). forward(batch) -> {"loss", "heads_loss" [K], "stats" [S, 4]}.

    batch: {input_ids, attention_mask, labels[, position_ids]} from the data, or {hidden [N, H], targets [N, K]}
    from the feature cache. Vocabulary projections run only on labelled rows, through module calls (so DeepSpeed
    ZeRO-3 gathers their weights). stats rows: heads 0..K-1, then the base's next token (medusa2).
    """

    def __init__(
        self, heads, base=None, lm_head=None, decay=0.8, logits_dtype="float32", lora=False, embed=None
    ):
        super().__init__()
        self.heads, self.base, self.lora = heads, base, lora
        self.decay, self.logits_bf16 = decay, logits_dtype == "bfloat16"
        vocab = heads.head_vocab  # reduced head vocabulary (FR-Spec): token id -> logit row, -1 outside it
        index = torch.full((heads.config.vocab_size if vocab.numel() else 0,), -1, dtype=torch.long)
        index[vocab] = torch.arange(len(vocab))
        self.register_buffer("vocab_index", index, persistent=False)  # moves with the module, never saved
        if vocab.numel() and lm_head is not None:  # frozen: keep only the head vocabulary's rows
            rows = nn.Linear(lm_head.in_features, len(vocab), bias=False, dtype=lm_head.weight.dtype)
            rows.weight.data.copy_(lm_head.weight.data[vocab])
            lm_head = rows.requires_grad_(False)
        self.frozen_lm_head = lm_head  # cached features only: a frozen copy of the base lm_head
        self.frozen_embed = embed  # cached features + sequential heads: a frozen copy of the input embeddings

    def train(self, mode=True):
        super().train(mode)
        if self.base is not None and not self.lora:
            self.base.eval()  # a frozen base never runs dropout
        return self

    def lm_head(self):
        return self.frozen_lm_head if self.base is None else self.base.get_output_embeddings()

    def embed(self):
        return self.frozen_embed if self.base is None else self.base.get_input_embeddings()

    def decoder(self):
        model = self.base.get_base_model() if self.lora else self.base  # peft -> the transformers model
        return model.base_model  # e.g. LlamaModel: last_hidden_state is after the final norm

    def project(self, proj, x, rows=None):
        """x [N, H] -> logits [N, V] through the module proj (so ZeRO-3 gathers it), or [N, len(rows)] through
        only those rows of its weight (a reduced head vocabulary)."""
        if rows is None:
            call = proj
        else:

            def call(x):
                return F.linear(x, proj.weight[rows])

        if self.logits_bf16:  # the K x [N, H] @ [H, V] projections dominate the cost
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return call(x)
        return call(x.to(proj.weight.dtype))

    def head_logits(self, k, x, target):
        """Head k on features x [N, H] with targets [N] -> (mean CE, stats) over the head's vocabulary."""
        proj = self.heads.lm_heads[k] if self.heads.lm_heads is not None else self.lm_head()
        if not self.vocab_index.numel():
            return ce_stats(self.project(proj, x), target)
        n, target = len(target), self.vocab_index[target]
        inside = target >= 0
        rows = None if proj is self.frozen_lm_head else self.heads.head_vocab  # the frozen copy is pre-sliced
        return ce_stats(self.project(proj, x[inside], rows), target[inside], count=n)

    def forward(self, batch, heads_coefficient=1.0, distill_weight=0.0):
        K = self.heads.num_heads
        extra = {}
        if "hidden" in batch:
            hidden, targets, tokens = (
                batch["hidden"],
                batch["targets"],
                batch.get("tokens"),
            )  # [N, H], [N, K] x2
        else:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
            with torch.set_grad_enabled(self.lora and torch.is_grad_enabled()):
                h = self.decoder()(**inputs, use_cache=False).last_hidden_state  # [B, T, H]
            shifts = ([1] if self.lora else []) + [k + 2 for k in range(K)]
            tg = shifted_targets(batch["labels"], batch.get("position_ids"), shifts)
            if self.lora:  # the base's own next-token loss (+ distillation from itself without adapters)
                rows = tg[..., 0] != IGNORE
                student = self.project(self.lm_head(), h[rows])
                extra["lm"] = ce_stats(student, tg[..., 0][rows])
                if distill_weight > 0:
                    with torch.no_grad(), self.base.disable_adapter():
                        ht = self.decoder()(**inputs, use_cache=False).last_hidden_state
                        teacher = self.project(self.lm_head(), ht[rows]).float()
                    kl = F.kl_div(student.float().log_softmax(-1), teacher.log_softmax(-1), log_target=True,
                                  reduction="sum")  # fmt: skip
                    extra["kl"] = kl / max(len(teacher), 1)  # per-row KL(teacher || student)
                tg = tg[..., 1:]
            keep = (tg != IGNORE).any(-1)  # positions with at least one head target
            hidden, targets = h[keep], tg[keep]
            tokens = shifted_tokens(batch["input_ids"], K)[keep]
        path_emb = None
        if self.heads.sequential:  # teacher forcing: head k reads the true tokens t+1 .. t+k+1
            if tokens is None:
                raise ValueError("sequential heads need the path tokens: rebuild the feature cache")
            with torch.no_grad():
                path_emb = self.embed()(tokens)  # [N, K, H]
        feats = self.heads.features(hidden.to(next(self.heads.parameters()).dtype), path_emb)  # [K, N, H]
        losses, stats = [], []
        for k in range(K):
            valid = targets[:, k] != IGNORE
            loss_k, stats_k = self.head_logits(k, feats[k][valid], targets[:, k][valid])
            losses.append(loss_k)
            stats.append(stats_k)
        heads_loss = sum(self.decay**k * loss for k, loss in enumerate(losses))
        loss = heads_coefficient * heads_loss
        if "lm" in extra:
            loss = loss + extra["lm"][0] + distill_weight * extra.get("kl", 0.0)
            stats.append(extra["lm"][1])
        return {"loss": loss, "heads_loss": torch.stack(losses).detach(), "stats": torch.stack(stats)}
