"""Pure tensor math: the recurrences, one function per family and form. No nn.Module here."""

from seqmem.ops.rnn import (
    LSTMState,
    activation,
    elman_recurrent,
    elman_step,
    gru_recurrent,
    gru_step,
    leaky_rnn_recurrent,
    leaky_rnn_step,
    lstm_recurrent,
    lstm_step,
)

__all__ = [
    "LSTMState",
    "activation",
    "elman_recurrent",
    "elman_step",
    "gru_recurrent",
    "gru_step",
    "leaky_rnn_recurrent",
    "leaky_rnn_step",
    "lstm_recurrent",
    "lstm_step",
]
