"""Likelihood estimators, advantages, the value model and policy/value losses as plain tensor functions."""

from algorithms.advantages import filter_groups, group_advantages, truncated_rewards
from algorithms.cj_grpo import cj_grpo_loss, cj_step_weights  # registers the cj_grpo estimator unit
from algorithms.d_tree_rpo import d_tree_rpo_loss, tree_advantages  # registers the d_tree_rpo estimator unit (tree rollouts)
from algorithms.espo import espo_estimate, espo_loss  # registers the espo estimator unit
from algorithms.estimators import ESTIMATORS, count_forward_passes, get_estimator, loss_mask
from algorithms.gdpo import gdpo_estimate, gdpo_loss  # registers the gdpo estimator unit
from algorithms.just_grpo import just_grpo_loss, just_grpo_weights  # registers the just_grpo estimator unit
from algorithms.losses import LOSSES, k3_kl, policy_loss, sequence_policy_loss
from algorithms.mdpo import mdpo_advantages, mdpo_loss  # registers the mdpo estimator unit (rewards on intermediate answers)
from algorithms.packing import pack_noisy
from algorithms.sft import sft_loss
from algorithms.spg import spg_estimate, spg_loss, spg_weights  # registers the spg estimator unit
from algorithms.trace import trace_logprobs, trace_pass_index, trace_step_index
from algorithms.value import GAE_FORMS, ValueModel, terminal_token_rewards, trace_gae, tracerl_gae, value_loss
from algorithms.vrpo import vrpo_estimate, vrpo_loss  # registers the vrpo estimator unit (offline preference pairs)
from algorithms.wd1 import wd1_loss, wd1_weights  # registers the wd1 estimator unit

__all__ = [
    "cj_grpo_loss",
    "cj_step_weights",
    "ESTIMATORS",
    "GAE_FORMS",
    "LOSSES",
    "ValueModel",
    "count_forward_passes",
    "d_tree_rpo_loss",
    "espo_estimate",
    "espo_loss",
    "filter_groups",
    "gdpo_estimate",
    "gdpo_loss",
    "get_estimator",
    "group_advantages",
    "just_grpo_loss",
    "just_grpo_weights",
    "k3_kl",
    "loss_mask",
    "mdpo_advantages",
    "mdpo_loss",
    "pack_noisy",
    "policy_loss",
    "sequence_policy_loss",
    "sft_loss",
    "spg_estimate",
    "spg_loss",
    "spg_weights",
    "terminal_token_rewards",
    "trace_gae",
    "trace_logprobs",
    "trace_pass_index",
    "trace_step_index",
    "tracerl_gae",
    "tree_advantages",
    "truncated_rewards",
    "value_loss",
    "vrpo_estimate",
    "vrpo_loss",
    "wd1_loss",
    "wd1_weights",
]
