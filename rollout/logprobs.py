"""Per-token log-probs of the sampling distribution without a [tokens, V] tensor.

The learner needs, for each scored token, log p(target) under the distribution the rollout
sampled from: logits / T with the mask id and the ids past the tokenizer excluded
(`DiffusionLM.sampling_logprobs`). Computing it as log_softmax over full logits keeps several
[tokens, V] copies alive (the logits, a float copy, the temperature-divided copy, the
log-softmax saved for backward, the exp for the entropy), and at V = 152k those dominate the
learner's memory. Here the LM head and the log-softmax are fused and walked in vocabulary
chunks (the online-softmax idea of Milakov & Gimelshein, 2018, "Online normalizer calculation
for softmax"):

    logp(t) = z_t / T - logsumexp_{v allowed} z_v / T,      z = h W^T (+ b)

Forward keeps only the hidden rows, the head weight (already alive as a parameter) and one
logsumexp per token; backward recomputes each chunk's logits, so memory is O(tokens x chunk).
Chunks cover only ids below `num_tokens`: the padded rows of the embedding never enter the
softmax (their gradient is zero, as through the -inf of the full path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 16384  # vocabulary ids per chunk: [rows, 16k] fp32 temporaries instead of [rows, 152k]
# Token rows per head matmul. Every matmul has the same [ROW_BLOCK, H] x [H, chunk] shape (the
# last block zero-padded), so a token's log-prob and gradient do not depend on how many other
# tokens share its pass: BLAS picks kernels, and so rounding, by shape, and a learner that splits
# a batch over ranks or micro-batches must compute the same function of each sample.
ROW_BLOCK = 64


def _compute_dtypes(hidden: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(matmul dtype, softmax dtype). Under autocast the head runs in the autocast dtype, as
    nn.Linear would; the softmax runs in at least fp32, as `sampling_logprobs` does."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev) and hidden.dtype in (torch.float32, torch.float16, torch.bfloat16):
        mm = torch.get_autocast_dtype(dev)
    else:
        mm = hidden.dtype
    return mm, torch.promote_types(mm, torch.float32)


def _chunks(num_tokens: int, chunk: int):
    for lo in range(0, num_tokens, chunk):
        yield lo, min(lo + chunk, num_tokens)


def _block_logits(h, w, b, lo, acc, temperature, mask_id):
    """z / T of the rows `h` [R, H] for ids [lo, lo + len(w)): [R, c] in the softmax dtype, the mask id at -inf."""
    z = F.linear(h, w, b).to(acc)
    if temperature > 0:
        z = z / temperature  # division, not a multiply by 1/T: the same rounding as sampling_logprobs
    if mask_id is not None and lo <= mask_id < lo + w.shape[0]:
        z[:, mask_id - lo] = float("-inf")
    return z


class _HeadLogprob(torch.autograd.Function):
    """Fused LM head + log-softmax + gather over vocabulary chunks (see the module docstring).

    hidden arrives padded to whole ROW_BLOCKs (zero rows, whose gradient is dropped)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, num_tokens, mask_id, chunk, with_entropy):
        mm, acc = _compute_dtypes(hidden)
        m, dev = hidden.shape[0], hidden.device
        spans = list(_chunks(num_tokens, chunk))
        target_z = torch.full((m,), float("-inf"), dtype=acc, device=dev)
        lse_parts = torch.empty((len(spans), m), dtype=acc, device=dev)
        mean_parts = torch.empty((len(spans), m), dtype=acc, device=dev) if with_entropy else None
        with torch.autocast(dev.type, enabled=False):  # dtypes are chosen explicitly above
            h = hidden.to(mm)
            for c, (lo, hi) in enumerate(spans):
                w = weight[lo:hi].to(mm)
                b = None if bias is None else bias[lo:hi].to(mm)
                for r in range(0, m, ROW_BLOCK):
                    rs = slice(r, r + ROW_BLOCK)
                    z = _block_logits(h[rs], w, b, lo, acc, temperature, mask_id)  # [R, c]
                    t = targets[rs]
                    picked = z.gather(1, (t - lo).clamp(0, hi - lo - 1)[:, None]).squeeze(1)
                    target_z[rs] = torch.where((t >= lo) & (t < hi), picked, target_z[rs])
                    lse_parts[c, rs] = torch.logsumexp(z, dim=-1)
                    if with_entropy:
                        # E_q[z] under this chunk's own softmax q; combined below with the chunk weights.
                        q = torch.exp(z - lse_parts[c, rs, None])
                        mean_parts[c, rs] = (q * z.masked_fill(torch.isinf(z), 0.0)).sum(-1)
            lse = torch.logsumexp(lse_parts, dim=0)  # [m]
            logp = target_z - lse
            entropy = torch.zeros(0, dtype=acc, device=dev)
            if with_entropy:
                # H = lse - E_p[z], and E_p[z] = sum_c P(chunk c) E_q_c[z]; a chunk of only
                # excluded ids has P = 0 and a NaN mean, which must not leak into the sum.
                p_chunk = torch.exp(lse_parts - lse[None])
                entropy = lse - torch.where(p_chunk > 0, p_chunk * mean_parts, torch.zeros_like(mean_parts)).sum(0)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, torch.isfinite(logp))
        ctx.mm, ctx.acc = mm, acc
        ctx.temperature, ctx.num_tokens, ctx.mask_id, ctx.chunk = temperature, num_tokens, mask_id, chunk
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, bias, targets, lse, scored = ctx.saved_tensors
        mm, acc, temperature = ctx.mm, ctx.acc, ctx.temperature
        m, dev = hidden.shape[0], hidden.device
        scale = 1.0 / temperature if temperature > 0 else 1.0
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        # d logp / d z_v = (1[v = t] - p_v) / T; a target outside the allowed ids has logp = -inf
        # and gets no gradient rather than NaNs.
        g = torch.where(scored, grad_logp.to(acc), torch.zeros_like(lse)) * scale
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=dev) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        with torch.autocast(dev.type, enabled=False):
            h = hidden.to(mm)
            for lo, hi in _chunks(ctx.num_tokens, ctx.chunk):
                w = weight[lo:hi].to(mm)
                b = None if bias is None else bias[lo:hi].to(mm)
                gw = torch.zeros((hi - lo, weight.shape[1]), dtype=acc, device=dev) if need_w else None
                for r in range(0, m, ROW_BLOCK):
                    rs = slice(r, r + ROW_BLOCK)
                    z = _block_logits(h[rs], w, b, lo, acc, temperature, ctx.mask_id)
                    gz = torch.exp(z - lse[rs, None]).neg_()  # -p, [R, c]
                    del z
                    t = targets[rs]
                    hit = ((t >= lo) & (t < hi)).nonzero(as_tuple=True)[0]
                    gz[hit, t[hit] - lo] += 1.0
                    gz = gz.mul_(g[rs, None]).to(mm)
                    if need_h:
                        grad_h[rs] += (gz @ w).to(acc)
                    if need_w:
                        gw += (gz.t() @ h[rs]).to(acc)
                    if grad_b is not None:
                        grad_b[lo:hi] += gz.sum(0).to(bias.dtype)
                if need_w:
                    grad_w[lo:hi] = gw.to(weight.dtype)
        return (grad_h.to(hidden.dtype) if need_h else None), grad_w, grad_b, None, None, None, None, None, None


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    num_tokens: int,
    mask_id: int | None,
    with_entropy: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of `targets` under softmax((hidden W^T + b) / T) over the allowed ids, in chunks.

    Args:
        hidden: [n, H] the rows that predict the targets (differentiable).
        weight: [V, H] LM-head weight; bias: [V] or None.
        targets: [n] long token ids.
        temperature: T; 0 (greedy) scores under T = 1, as `sampling_logprobs` does.
        num_tokens: ids >= num_tokens (a padded embedding) are excluded; so is `mask_id`.
        with_entropy: also the entropy of each row's distribution (detached, a metric).
        chunk: vocabulary ids per chunk.
    Returns:
        (logp [n], entropy [n] or None) in at least fp32; logp is -inf for an excluded target.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"head_logprobs wants hidden [n, H] and targets [n], got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    if chunk < 1 or num_tokens < 1:
        raise ValueError("head_logprobs needs chunk >= 1 and num_tokens >= 1")
    n = hidden.shape[0]
    pad = -n % ROW_BLOCK  # whole row blocks: zero rows, sliced off again (their gradient is dropped)
    if pad:
        hidden = torch.cat([hidden, hidden.new_zeros(pad, hidden.shape[1])])
        targets = torch.cat([targets, targets.new_zeros(pad)])
    num_tokens = min(int(num_tokens), weight.shape[0])
    logp, entropy = _HeadLogprob.apply(hidden, weight, bias, targets, float(temperature), num_tokens, mask_id, int(chunk), with_entropy)
    return logp[:n], (entropy[:n] if with_entropy else None)
