"""fastrnn: drop-in fused-kernel replacements for torch.nn's recurrent layers."""
from fastrnn.backends import available_backends
from fastrnn.cuda_paths import cuda_path
from fastrnn.modules import (FusedGRU, FusedGRUCell, FusedLSTM, FusedLSTMCell, FusedRNN,
                             FusedRNNCell, convert)

__all__ = ["FusedRNN", "FusedGRU", "FusedLSTM", "FusedRNNCell", "FusedGRUCell",
           "FusedLSTMCell", "convert", "available_backends", "cuda_path"]
