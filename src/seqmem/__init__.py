"""seqmem."""
