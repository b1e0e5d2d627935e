"""Models: one Block and one SequenceModel for every mixer."""

from seqmem.models.sequence import BLOCKS, Block, SequenceModel, masked_heads_loss

__all__ = ["BLOCKS", "Block", "SequenceModel", "masked_heads_loss"]
