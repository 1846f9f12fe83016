"""A KV cache whose appends write in place: the block sampler's cache.

transformers' `DynamicCache` appends with `torch.cat`, so every denoising step copies every
cached key of every layer, and a step that must not keep its block's keys then crops them.
A block sampler appends a block, crops it, appends it again, step after step: the copies
grow with the cached length and dominate the host time of long generations. `SlotCache`
preallocates one buffer per layer for the whole canvas and writes each step's keys into
their slots; cropping moves a cursor. The attention sees a view of the filled slots, so the
numbers are those of `DynamicCache` exactly.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class SlotLayer(DynamicLayer):
    """One layer's keys and values in a preallocated [B, H, capacity, D] buffer."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        b, h, _, d = key_states.shape
        self._k = key_states.new_empty((b, h, self.capacity, d))
        self._v = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
        self.is_initialized = True
        self._view()

    def _view(self) -> None:
        self.keys, self.values = self._k[..., : self.length, :], self._v[..., : self.length, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the new keys/values after the filled slots; return all filled slots (a view)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:  # past the planned canvas (should not happen): grow, as DynamicLayer would
            extra = max(end - self.capacity, self.capacity // 2)
            self._k = torch.cat([self._k, self._k.new_empty((*self._k.shape[:2], extra, self._k.shape[-1]))], dim=-2)
            self._v = torch.cat([self._v, self._v.new_empty((*self._v.shape[:2], extra, self._v.shape[-1]))], dim=-2)
            self.capacity += extra
        self._k[..., self.length : end, :] = key_states
        self._v[..., self.length : end, :] = value_states
        self.length = end
        self._view()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` slots (a negative count, as DynamicLayer takes)."""
        if tokens_to_remove > 0:
            raise ValueError("SlotLayer.crop takes a negative count of tokens to remove")
        if self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._view()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows `indices` (finished samples leave the batch)."""
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self._view()


class SlotCache(Cache):
    """A transformers `Cache` of `SlotLayer`s sized for `capacity` positions."""

    def __init__(self, capacity: int):
        super().__init__(layer_class_to_replicate=lambda: SlotLayer(capacity))
