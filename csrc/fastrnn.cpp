// Every fastrnn op schema, in one place. Kernels register elsewhere:
// csrc/cpu/*.cpp (CPU), csrc/cuda/*.cu (CUDA), csrc/autograd.cpp (Autograd).
//
// Shape letters, used in every header and comment of this project:
//   T time steps, N batch, C input features, H hidden size,
//   P size of the recurrent state h (P == H, or proj_size for projected LSTMs),
//   G gate count (RNN 1, GRU 3, LSTM 4), S = sum(batch_sizes) rows of packed data.
//
// One op call runs ONE layer in ONE direction over the whole sequence.
//   input        [T,N,C] (padded, time-major) or [S,C] packed data with
//   batch_sizes  int64 CPU tensor [T], non-increasing (PackedSequence.batch_sizes);
//                None for padded input.
//   h0           [N,P]        c0 [N,H] (LSTM)
//   w_ih [G*H,C] w_hh [G*H,P] b_ih, b_hh [G*H] or None   w_hr [P,H] or None (LSTM)
//   reverse      run from the last step to the first (second direction of a
//                bidirectional layer); for packed input every sequence is
//                reversed within its own length, as torch.nn does.
// Returns output [T,N,P] or [S,P], h_n [N,P] (and c_n [N,H]).
//
// The *_layer ops are what Python calls; they carry autograd. Their batch_first takes
// padded input as [N,T,C] and returns output [N,T,P], transposed inside the op (and its
// autograd node), so that a batch_first layer's graph holds no transpose nodes.
// *_layer_fwd and *_layer_bwd are the kernels behind them: the forward saves a
// backend-private `workspace` when need_workspace is true (an empty tensor otherwise) that
// only the same backend's *_layer_bwd reads. Bias gradients are always returned (shape
// [G*H]); the autograd glue drops them when the layer has no bias. *_layer_bwd computes
// grad_input only when need_grad_input, the weight and bias gradients only when
// need_grad_weights, and grad_h0 (with grad_c0) only when need_grad_state (autograd asks
// for what the graph needs: the input of a first layer, frozen weights and zero initial
// states need none); what it skips comes back as an empty tensor.
//
// layer_stack runs a whole torch.nn-style stack (num_layers x directions, dropout between
// layers) through the *_layer ops of whichever device the tensors live on; see
// csrc/stack.cpp.
#include <torch/library.h>

TORCH_LIBRARY(fastrnn, m) {
  m.def("rnn_layer(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, "
        "Tensor? b_ih, Tensor? b_hh, bool relu, bool reverse, bool batch_first=False) "
        "-> (Tensor, Tensor)");
  m.def("rnn_layer_fwd(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, "
        "Tensor? b_ih, Tensor? b_hh, bool relu, bool reverse, bool need_workspace) "
        "-> (Tensor output, Tensor h_n, Tensor workspace)");
  m.def("rnn_layer_bwd(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? batch_sizes, "
        "Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor output, "
        "Tensor workspace, bool relu, bool reverse, bool need_grad_input, "
        "bool need_grad_weights, bool need_grad_state) "
        "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, "
        "Tensor grad_b_ih, Tensor grad_b_hh)");

  m.def("gru_layer(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, "
        "Tensor? b_ih, Tensor? b_hh, bool reverse, bool batch_first=False) -> (Tensor, Tensor)");
  m.def("gru_layer_fwd(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, "
        "Tensor? b_ih, Tensor? b_hh, bool reverse, bool need_workspace) "
        "-> (Tensor output, Tensor h_n, Tensor workspace)");
  m.def("gru_layer_bwd(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? batch_sizes, "
        "Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor output, "
        "Tensor workspace, bool reverse, bool need_grad_input, bool need_grad_weights, "
        "bool need_grad_state) "
        "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, "
        "Tensor grad_b_ih, Tensor grad_b_hh)");

  m.def("lstm_layer(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, "
        "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, "
        "bool batch_first=False) -> (Tensor, Tensor, Tensor)");
  m.def("lstm_layer_fwd(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, "
        "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, "
        "bool need_workspace) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def("lstm_layer_bwd(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
        "Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, Tensor? w_hr, Tensor output, Tensor workspace, bool reverse, "
        "bool need_grad_input, bool need_grad_weights, bool need_grad_state) "
        "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, "
        "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_w_hr)");

  m.def("layer_stack(str mode, Tensor input, Tensor? batch_sizes, Tensor? h0, Tensor? c0, "
        "Tensor[] weights, int num_layers, bool bidirectional, bool batch_first, "
        "bool has_bias, bool has_proj, float dropout, bool train) "
        "-> (Tensor output, Tensor h_n, Tensor c_n)");
}
