"""TraceRL's diffusion value model and step-level GAE over the decoding trace.

Decoding a diffusion LM is an MDP whose steps are the sampler's denoising steps: the state
before step k is the prompt plus every token committed at earlier steps, the action commits
the tokens of step k. With shrinkage s the MDP steps are the merged training steps
(`algorithms.trace.trace_step_index`): each group of s decoding steps is one state, and
discounting counts groups. A value model estimates, for every token, the value of the state in
which it was decoded. Two ways to turn those values into advantages (GAE_FORMS):

  "tracerl"  TraceRL's own (Wang et al., 2025, arXiv:2509.06949; dLLM-RL's value trainer): each
             token keeps its own value as its baseline, the step means only bootstrap,
                 A_j = r_j - V_j + gamma V*_{t+1} + gamma lam A*_{t+1},
                 R_j = r_j + gamma R*_{t+1}   (the discounted Monte Carlo return, the value target)
             `tracerl_gae`;
  "step"     every token of a step shares its step's GAE advantage over step-mean values, and
             the value target is A + V (`trace_gae`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from algorithms.losses import LossTotals
from algorithms.trace import trace_passes
from rollout.models import DiffusionLM
from rollout.trajectory import Trajectory


class ValueModel(nn.Module):
    """A DiffusionLM backbone plus a scalar head: one value per completion token.

    The head is nn.Linear(hidden, 1), zero-initialised so a fresh critic predicts 0 everywhere
    and the first advantages are plain returns rather than noise from a random head. The
    backbone is registered as a submodule, so `parameters()` trains both; pass a copy of the
    policy's DiffusionLM (the critic must not share weights with the actor).
    """

    def __init__(self, lm: DiffusionLM):
        super().__init__()
        self.lm = lm
        self.backbone = lm.model  # registered: its parameters are the critic's
        hidden = lm.model.config.hidden_size
        self.head = nn.Linear(hidden, 1, dtype=lm.model.dtype, device=lm.device)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, trajs: Sequence[Trajectory], shrink: int = 1) -> torch.Tensor:
        return self.values(trajs, shrink)

    def values(self, trajs: Sequence[Trajectory], shrink: int = 1) -> torch.Tensor:
        """Values [N, C] of every completion token at the state where it was decoded.

        The inputs are TraceRL's replayed passes (`trace_pass_index`, `pack_noisy`): token c is read
        in the pass that scores it, where it and every later-decoded token of its block are masked.
        The value is read from the hidden state that predicts c (its own position; one position
        earlier for shifted-logit families such as Dream), the same row that gives its log-prob.
        Only tokens that carry loss get a value (up to and including the first EOS: the filler
        after it is no MDP state). Differentiable; 0 elsewhere.
        """
        lm = self.lm
        n, width = len(trajs), max(len(t.completion_ids) for t in trajs)
        dtype = torch.promote_types(lm.model.dtype, torch.float32)
        values = torch.zeros((n, width), dtype=dtype, device=lm.device)
        for index, v in self.pass_values(trajs, shrink):
            values = values.index_put(index, v.to(dtype))
        return values

    def pass_values(self, trajs: Sequence[Trajectory], shrink: int = 1):
        """The values of `values`, one replayed pass at a time: yields ((r, c), values [n_k]),
        (r, c) indexing the [N, C] completion grid, each token in exactly one pass (so a learner
        can take each pass's backward before the next, as for `trace_pass_scores`)."""
        lm, device = self.lm, self.lm.device
        for rows, packed, (ri, ci) in trace_passes(lm, trajs, shrink):
            hidden = lm.encode(packed.input_ids, packed.position_ids, packed.attention(lm.flex))  # [r, Q, H]
            scored = torch.zeros(packed.select.shape, dtype=torch.bool, device=device)
            scored[ri, ci] = True
            h = lm.predicting_rows(hidden, packed.select, scored)  # [n, H], where each token's logit is read
            yield (rows[ri], ci), self.head(h).squeeze(-1)  # [n], row-major as (ri, ci)


def fold_token_rewards(token_rewards: torch.Tensor, step_map: torch.Tensor) -> torch.Tensor:
    """Move rewards sitting on positions that are no MDP step (step_map -1: padding, the filler
    after the first EOS) onto the terminal token (`terminal_token_rewards`), so no reward is lost
    when filler leaves the trace. [N, C] -> [N, C]."""
    outside = (step_map < 0).to(token_rewards.dtype)
    lost = (token_rewards * outside).sum(1)  # [N]
    return token_rewards * (1 - outside) + terminal_token_rewards(lost, step_map)


def terminal_token_rewards(rewards: torch.Tensor, step_map: torch.Tensor) -> torch.Tensor:
    """Place each sequence reward on the last trace step: [N] rewards, [N, C] step_map -> [N, C].

    The whole reward goes to one token of the last step (the rightmost one), so that the step
    reward, the sum over its tokens, is exactly the sequence reward whatever the step's size.
    step_map: long, -1 at padding.
    """
    valid = step_map >= 0
    last_step = step_map.masked_fill(~valid, -1).max(dim=1, keepdim=True).values  # [N, 1]
    in_last = valid & (step_map == last_step)
    cols = torch.arange(step_map.shape[1], device=step_map.device).expand_as(step_map)
    rightmost = torch.where(in_last, cols, -1).max(dim=1).values  # [N]
    out = torch.zeros(step_map.shape, dtype=rewards.dtype, device=rewards.device)
    has = rightmost >= 0
    out[has.nonzero(as_tuple=True)[0], rightmost[has]] = rewards[has]
    return out


def _step_stats(rewards_i, values_i, steps_i):
    """Per distinct step of one row (ascending): (token -> step rank [n], step reward = sum [K],
    step value = mean [K])."""
    _, inv = steps_i.unique(sorted=True, return_inverse=True)
    k = int(inv.max()) + 1
    zeros = torch.zeros(k, dtype=values_i.dtype, device=values_i.device)
    count = zeros.index_add(0, inv, torch.ones_like(inv, dtype=values_i.dtype))
    r_step = zeros.index_add(0, inv, rewards_i)
    v_step = zeros.index_add(0, inv, values_i) / count
    return inv, r_step, v_step


def _step_gae(r_step, v_step, gamma: float, lam: float):
    """GAE over one row's steps: A*_k = delta_k + gamma lam A*_{k+1}, delta_k = R_k + gamma V_{k+1} - V_k,
    and the discounted Monte Carlo return G*_k = R_k + gamma G*_{k+1} ([K] each, V_{K+1} = 0)."""
    a_step, g_step = torch.zeros_like(v_step), torch.zeros_like(v_step)
    next_v = next_a = next_g = 0.0
    for j in range(v_step.numel() - 1, -1, -1):
        next_a = r_step[j] + gamma * next_v - v_step[j] + gamma * lam * next_a
        next_g = r_step[j] + gamma * next_g
        a_step[j], g_step[j] = next_a, next_g
        next_v = v_step[j]
    return a_step, g_step


def _per_row_gae(token_rewards, token_values, step_map, gamma, lam, per_token):
    """The row loop both GAE forms share: step statistics, step-level GAE, back to tokens.
    per_token (TraceRL): A_j = A*_t + V*_t - V_j and R_j = R*_t; else A*_t and A*_t + V*_t."""
    if not (token_rewards.shape == token_values.shape == step_map.shape):
        raise ValueError("token_rewards, token_values and step_map must have the same [N, C] shape")
    rewards, values = token_rewards.double(), token_values.detach().double()
    adv, ret = torch.zeros_like(values), torch.zeros_like(values)
    for i in range(step_map.shape[0]):
        valid = step_map[i] >= 0
        if not valid.any():
            continue
        inv, r_step, v_step = _step_stats(rewards[i][valid], values[i][valid], step_map[i][valid])
        a_step, g_step = _step_gae(r_step, v_step, gamma, lam)
        if per_token:
            adv[i, valid] = a_step[inv] + v_step[inv] - values[i][valid]
            ret[i, valid] = g_step[inv]
        else:
            adv[i, valid] = a_step[inv]
            ret[i, valid] = (a_step + v_step)[inv]
    return adv.to(token_values.dtype), ret.to(token_values.dtype)


@torch.no_grad()
def tracerl_gae(
    token_rewards: torch.Tensor,
    token_values: torch.Tensor,
    step_map: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TraceRL's per-token GAE (Wang et al., 2025; dLLM-RL's value trainer), mapped to tokens.

    Args as `trace_gae` (step_map: the MDP step of each token, merged steps with shrinkage,
    -1 = not a step). For each row with steps t = 1..K and T_t the tokens of step t:

        r_j   = R_t = sum_{c in T_t} token_rewards[c]    for j in T_t (the step's reward, on each
                                                          of its tokens: a terminal reward sits
                                                          on every token of the last step)
        V*_t  = mean_{c in T_t} token_values[c],          V*_{K+1} = A*_{K+1} = R*_{K+1} = 0
        A*_t  = R_t - V*_t + gamma V*_{t+1} + gamma lam A*_{t+1}     (step-level GAE)
        R*_t  = R_t + gamma R*_{t+1}                      (discounted Monte Carlo return)
        A_j   = r_j - V_j + gamma V*_{t+1} + gamma lam A*_{t+1}  = A*_t + (V*_t - V_j)
        R_j   = r_j + gamma R*_{t+1}                      = R*_t

    so each token is baselined by its own value, and the value head learns the Monte Carlo
    return, not A + V. Example (gamma = lam = 1, reward 1, values [.2, .6 | .5, .9] over two
    steps): A = [.8, .4, .5, .1] (the "step" form gives [.6, .6, .3, .3]).
    Returns (advantages [N, C], returns [N, C]), 0 off the steps. Computed without gradient.
    """
    return _per_row_gae(token_rewards, token_values, step_map, gamma, lam, per_token=True)


@torch.no_grad()
def trace_gae(
    token_rewards: torch.Tensor,
    token_values: torch.Tensor,
    step_map: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-level GAE over trace steps (the "step" form), mapped back to tokens.

    Args:
        token_rewards: [N, C] reward per completion token (a terminal reward sits on one token of
            the last step: `terminal_token_rewards`; per-token terms such as KL penalties may sit
            anywhere).
        token_values: [N, C] value of each token's decoding state (`ValueModel.values`).
        step_map: [N, C] long, the MDP step of each token, ordered as decoded: the raw global
            step map, or with shrinkage the merged steps (`trace_step_index`); -1 = padding or
            no loss (after the first EOS).
    For each row, let s_1 < ... < s_K be its distinct steps and T_k its tokens at step s_k:

        R_k     = sum_{c in T_k} token_rewards[c]          (step reward)
        V_k     = mean_{c in T_k} token_values[c]          (step value), V_{K+1} = 0
        delta_k = R_k + gamma V_{k+1} - V_k
        A_k     = delta_k + gamma lam A_{k+1},   A_{K+1} = 0
        G_k     = A_k + V_k                               (return, the value target)

    and every token of T_k gets A_k and G_k. With gamma = lam = 1, G_k = sum_{j >= k} R_j
    (the Monte Carlo return) and A_k = G_k - V_k. Steps are ordered by their global index, so
    the blocks of a block model are walked in decoding order. Computed without gradient.
    Returns (advantages [N, C], returns [N, C]), 0 at padding.
    """
    return _per_row_gae(token_rewards, token_values, step_map, gamma, lam, per_token=False)


GAE_FORMS = {
    "tracerl": tracerl_gae,  # TraceRL's per-token form, Monte Carlo value targets (the default)
    "step": trace_gae,  # one advantage per step over step-mean values, A + V value targets
}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    totals: LossTotals | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped PPO value loss, averaged over the tokens in `mask` (all [N, C]).

        V_clip = old_V + clip(V - old_V, -clip_eps, clip_eps)
        L      = 0.5 * mean_tokens max((V - G)^2, (V_clip - G)^2)

    The clip keeps the critic from moving far from the values the advantages were computed
    with in one update (PPO2 / OpenAI baselines). Metrics: loss/value, value/clipfrac (tokens
    where the clipped error is the larger), value/mean, returns/mean and explained_variance
    = 1 - Var[G - V] / Var[G] over the masked tokens (1 is perfect, <= 0 is no better than a
    constant).

    totals: the whole minibatch's counts when this is one piece of it (algorithms.losses): the
    loss and the token means are then this piece's share (they sum over the pieces to the
    whole's), and explained_variance, which does not split that way, is left out; sum
    `explained_variance_moments` over the pieces and call `explained_variance` instead.
    """
    m = mask.to(values.dtype)
    n = max((totals or LossTotals.of(mask)).tokens, 1.0)
    v_clip = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    err = (values - returns) ** 2
    err_clip = (v_clip - returns) ** 2
    loss = 0.5 * (torch.maximum(err, err_clip) * m).sum() / n
    with torch.no_grad():
        metrics = {
            "loss/value": loss.item(),
            "value/clipfrac": float(((err_clip > err).to(m.dtype) * m).sum() / n),
            "value/mean": float((values * m).sum() / n),
            "returns/mean": float((returns * m).sum() / n),
        }
        if totals is None:
            metrics["explained_variance"] = explained_variance(explained_variance_moments(values, returns, mask))
    return loss, metrics


def explained_variance_moments(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sums over the masked tokens that `explained_variance` needs: [n, sum G, sum G^2, sum E, sum E^2]
    with E = G - V (float64). Additive, so pieces of a batch (ranks, micro-batches) can sum them."""
    sel = mask.bool()
    g = returns.detach()[sel].double()
    e = g - values.detach()[sel].double()
    return torch.stack([torch.tensor(float(g.numel()), dtype=torch.float64, device=g.device), g.sum(), (g * g).sum(), e.sum(), (e * e).sum()]).cpu()


def explained_variance(moments: torch.Tensor) -> float:
    """1 - Var[G - V] / Var[G] from `explained_variance_moments` (nan without tokens or when Var[G] = 0)."""
    n, sg, sg2, se, se2 = (float(x) for x in moments)
    if n == 0:
        return float("nan")
    var_g = sg2 / n - (sg / n) ** 2
    var_e = se2 / n - (se / n) ** 2
    # relative guard: the moment form leaves ~1e-16 * E[G^2] of rounding where Var[G] is exactly 0
    if var_g <= 1e-12 * max(sg2 / n, 1e-300):
        return float("nan")
    return 1 - var_e / var_g
