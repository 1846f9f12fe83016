"""Likelihood estimators, advantages and policy losses as plain tensor functions."""

from algorithms.advantages import group_advantages
from algorithms.losses import k3_kl, policy_loss
from algorithms.packing import pack_noisy
from algorithms.sft import sft_loss
from algorithms.trace import trace_logprobs, trace_pass_index

__all__ = ["group_advantages", "k3_kl", "pack_noisy", "policy_loss", "sft_loss", "trace_logprobs", "trace_pass_index"]
