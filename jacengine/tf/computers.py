"""The block computer for a spec's method: the recurrent chain's, or the generic compiled one."""

from __future__ import annotations

from jacengine.planning.spec import JacobianSpec
from jacengine.tf.adapters import TFModel
from jacengine.tf.block_computer import BlockComputer
from jacengine.tf.recurrent.computer import RecurrentBlockComputer
from jacengine.tf.recurrent.structure import METHOD as RECURRENT

Computer = BlockComputer | RecurrentBlockComputer


def block_computer(model: TFModel, spec: JacobianSpec, strict: bool = False) -> Computer:
    """A computer of ``spec.method`` for ``model``; ``strict``: see :class:`BlockComputer`. The
    recurrent one raises :class:`~jacengine.errors.MethodUnsupported` for a model that is not a
    recurrent chain, naming the layer."""
    if spec.method == RECURRENT:
        return RecurrentBlockComputer(model, spec, strict=strict)
    return BlockComputer(model, spec, strict=strict)
