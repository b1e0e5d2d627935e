"""seqmem: build, train and dissect sequence models that remember.

    from seqmem import mixers, tasks
    rnn = mixers.build("leaky_rnn", 128)
    task = tasks.build("n_parity", N=[2, 3])
"""

__version__ = "0.1.0"
