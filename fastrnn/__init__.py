"""fastrnn: drop-in fused-kernel replacements for torch.nn's recurrent layers."""
from fastrnn.backends import available_backends
from fastrnn.modules import (FusedGRU, FusedGRUCell, FusedLSTM, FusedLSTMCell, FusedRNN,
                             FusedRNNCell, convert)

__all__ = ["FusedRNN", "FusedGRU", "FusedLSTM", "FusedRNNCell", "FusedGRUCell",
           "FusedLSTMCell", "convert", "available_backends"]
