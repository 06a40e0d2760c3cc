"""The recurrent state as the model's own object.

Every recurrent model of the suite carries a constant-size state between calls, `(inputs, state) -> (outputs,
new_state)`. Its layout differs per generation (RWKV-4: five vectors per layer; RWKV-7: two token shifts and an
N x N matrix per head and layer), so callers never index into it: they use the operations below, which every
state has, whatever its fields.

    state = model.init_state(batch=4)
    first = state[0:1]                        # select sequences of the batch (an int, slice, list or index tensor)
    both = type(state).cat([first, first])    # concatenate batches
    copy = state.clone(); moved = state.to("cuda")
    buffer.copy_(state)                       # in place, e.g. into a CUDA graph's static buffers
    tensors = state.tensors()                 # the fields in order, each (B, ...); type(state)(*tensors) rebuilds

A generation's state is a dataclass subclass naming its fields, each a tensor with the batch first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch.utils import _pytree


class RecurrentState:
    """Base of every model's state: a dataclass of batch-first tensors (see the module docstring)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # a pytree node, so torch.compile, CUDA-graph capture and tree_map see through it to its tensors
        _pytree.register_pytree_node(
            cls, lambda s: (list(s.tensors()), None), lambda values, _: cls(*values), serialized_type_name=cls.__name__
        )

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def _map(self, fn) -> RecurrentState:
        return type(self)(*(fn(t) for t in self.tensors()))

    @property
    def batch_size(self) -> int:
        return self.tensors()[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.tensors()[0].device

    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, index) -> RecurrentState:
        """The sequences `index` of the batch (an int keeps the batch dimension: state[i] is a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    @classmethod
    def cat(cls, states: Sequence[RecurrentState]) -> RecurrentState:
        """The batches of `states`, one after another."""
        states = list(states)
        if not states or any(type(s) is not cls for s in states):
            got = sorted({type(s).__name__ for s in states})
            raise TypeError(f"{cls.__name__}.cat takes a non-empty list of {cls.__name__}; got {got or 'nothing'}")
        return cls(*(torch.cat(parts) for parts in zip(*(s.tensors() for s in states))))

    def clone(self) -> RecurrentState:
        return self._map(torch.clone)

    def detach(self) -> RecurrentState:
        return self._map(torch.Tensor.detach)

    def requires_grad_(self, requires_grad: bool = True) -> RecurrentState:
        """Record operations on every tensor (gradients with respect to an initial state), in place."""
        for t in self.tensors():
            t.requires_grad_(requires_grad)
        return self

    def to(self, device=None) -> RecurrentState:
        """The state on another device (its dtypes are the model's choice, so they stay)."""
        return self._map(lambda t: t.to(device))

    def copy_(self, other: RecurrentState) -> RecurrentState:
        """Overwrite this state's tensors in place with `other`'s (same type and shapes)."""
        if type(other) is not type(self):
            raise TypeError(f"cannot copy a {type(other).__name__} into a {type(self).__name__}")
        for mine, theirs in zip(self.tensors(), other.tensors()):
            if mine.data_ptr() != theirs.data_ptr():
                mine.copy_(theirs)
        return self

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.tensors())

    def allclose(self, other: RecurrentState, **kwargs) -> bool:
        return type(other) is type(self) and all(
            torch.allclose(a, b, **kwargs) for a, b in zip(self.tensors(), other.tensors())
        )
