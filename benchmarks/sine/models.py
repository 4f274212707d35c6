"""The seeds' networks, built as twins: torch.nn and fastrnn with identical weights.

The recurrent model is the textbook's (seeds 000/002): one recurrent layer (input 1) and a
Linear head applied at every step; seed 003's variant only sets batch_first. The MLP is
the textbook's baseline. Every model is called as model(x, hidden) -> (prediction, hidden)
so one trainer serves them all; the MLP ignores and returns no hidden state.
"""
import torch
from torch import nn

import fastrnn

RECURRENT_CELLS = ("rnn", "gru", "lstm")
CELLS = RECURRENT_CELLS + ("mlp",)
IMPLS = ("fastrnn", "torch")
LAYER_CLASSES = {
    "torch": {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM},
    "fastrnn": {"rnn": fastrnn.FusedRNN, "gru": fastrnn.FusedGRU, "lstm": fastrnn.FusedLSTM},
}
# The MLP has no recurrent layer, so fastrnn has nothing to replace: it runs once, as torch.
MLP_IMPL = "torch"
MLP_HIDDEN = (32, 16)


class RecurrentRegressor(nn.Module):
    """x [N,T,1] -> prediction [N,T,1] (the same layout as x), plus the final hidden state.

    Time-major layers get x transposed, as the textbook's forward does; its rollout feeds
    unbatched single steps [1,1], which the transpose leaves as they are.
    """

    def __init__(self, layer_class, hidden_size, batch_first, **layer_options):
        super().__init__()
        self.rnn = layer_class(input_size=1, hidden_size=hidden_size, batch_first=batch_first,
                               **layer_options)
        self.linear = nn.Linear(hidden_size, 1)

    def forward(self, x, hidden):
        if self.rnn.batch_first:
            out, hidden = self.rnn(x, hidden)
            return self.linear(out), hidden
        out, hidden = self.rnn(torch.transpose(x, 0, 1), hidden)
        return torch.transpose(self.linear(out), 0, 1), hidden


class MLPRegressor(nn.Module):
    """The textbook's baseline: each point mapped to the next on its own (1-32-16-1, ReLU)."""

    def __init__(self):
        super().__init__()
        first, second = MLP_HIDDEN
        self.mlp = nn.Sequential(nn.Linear(1, first), nn.ReLU(), nn.Linear(first, second),
                                 nn.ReLU(), nn.Linear(second, 1))

    def forward(self, x, hidden):
        return self.mlp(x), None


def build_twins(cell, impls, *, seed, hidden_size, batch_first, backend="auto",
                init_std=None):
    """{impl: model} for one cell. The torch.nn model is always built first, from
    torch.manual_seed(seed), and the fastrnn model loads its state_dict, so both start
    from the same weights whichever impls are asked for. init_std redraws the recurrent
    weights from N(0, init_std) as seed 001 does."""
    torch.manual_seed(seed)
    if cell == "mlp":
        return {MLP_IMPL: MLPRegressor()}
    reference = RecurrentRegressor(LAYER_CLASSES["torch"][cell], hidden_size, batch_first)
    if init_std is not None:
        with torch.no_grad():
            for parameter in reference.rnn.parameters():
                parameter.normal_(0.0, init_std)
    twins = {}
    for impl in impls:
        if impl == "torch":
            twins[impl] = reference
            continue
        fused = RecurrentRegressor(LAYER_CLASSES["fastrnn"][cell], hidden_size, batch_first,
                                   backend=backend)
        fused.load_state_dict(reference.state_dict())
        twins[impl] = fused
    return twins


def detach_state(hidden):
    """The hidden state cut from the graph of the step that made it (seeds' detach_)."""
    if hidden is None:
        return None
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)
    return hidden.detach()


def last_sequence_state(hidden):
    """hidden[:, -1] (per tensor for LSTM): the unbatched [layers, H] state of the last
    sequence in the batch, which the textbook's rollout starts from."""
    if hidden is None:
        return None
    if isinstance(hidden, tuple):
        return tuple(h[:, -1] for h in hidden)
    return hidden[:, -1]
