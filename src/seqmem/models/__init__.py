"""Models: one Block and one SequenceModel for every mixer."""

from seqmem.models.sequence import (
    BLOCKS,
    Block,
    SequenceModel,
    is_hybrid,
    masked_heads_loss,
    masked_mse,
    masked_mse_loss,
    parse_pattern,
)

__all__ = ["BLOCKS", "Block", "SequenceModel", "is_hybrid", "masked_heads_loss", "masked_mse",
           "masked_mse_loss", "parse_pattern"]
