"""benchmarks/fma_bound.py: its reference GEMM does exactly the layer's multiply-adds."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import fma_bound


def test_lstm_multiply_adds_counts_the_input_and_hidden_products():
    # T=3 steps of N=2 rows, C=5 inputs, H=7 units: W_ih [28, 5] and W_hh [28, 7] per row.
    assert fma_bound.lstm_multiply_adds(N=2, T=3, C=5, H=7) == 3 * 2 * (28 * 5 + 28 * 7)


def test_same_work_gemm_does_the_layers_multiply_adds():
    with FlopCounterMode(display=False) as counter:
        fma_bound.same_work_gemm(N=2, T=3, C=5, H=7)()
    assert counter.get_total_flops() == 2 * fma_bound.lstm_multiply_adds(N=2, T=3, C=5, H=7)
