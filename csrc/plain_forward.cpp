// fastrnn._C.plain_forward: FusedRNN / FusedGRU / FusedLSTM.forward for the plain call, in
// C++: a 3-D Tensor input or a sorted PackedSequence, and hx either None or states of
// exactly the shape, dtype and device torch.nn expects.
//
// Why: at the sine-wave shape (B=1, T=20, H=16) the layer stack runs in ~6 us, and the
// Python of the module's forward (torch.nn's argument checks, the backend choice, the call
// into layer_stack) took ~3 us more. Here the same checks read the module's attributes and
// compare sizes in C++, then call layer_stack through its typed dispatcher handle, as
// fastrnn._C.layer_stack does (csrc/python_entry.cpp). Packed input at B=64, T=100,
// H=128 gained too: there that Python took ~33 us, run after the layer had pushed it out
// of the caches (see plain_packed).
//
// Every call that is not plain gets None back, with nothing done: 2-D input, a
// PackedSequence with indices (unsorted) or of a subclass, a size, dtype or device that
// does not match, an empty batch or sequence, a weight swapped behind RNNBase.__setattr__'s
// back, an argument or mode that overrides torch functions, a backend other than the
// compiled one. fastrnn/modules.py then runs its Python forward, which raises torch.nn's
// errors or takes the other paths; so this file raises no error of its own. The caller
// deals with autocast and torch.compile (which must never see this function) before
// calling it.
#include "plain_forward.h"

#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "op_handle.h"
#include "plain_call.h"

namespace fastrnn {
namespace {

namespace py = pybind11;
using at::Tensor;
using plain::attr;
using plain::plain_state;
using plain::plain_tensor;
using plain::same_kind;

// The module attributes this file reads, interned once (see plain::intern): a name made
// per call is hashed and compared per call, which cost ~1 us over the ~15 attribute reads.
struct PythonNames {
  PyObject *flat_weights = plain::intern("_flat_weights"),
           *flat_weights_names = plain::intern("_flat_weights_names"),
           *parameters = plain::intern("_parameters"),
           *batch_first = plain::intern("batch_first"),
           *input_size = plain::intern("input_size"), *mode = plain::intern("mode"),
           *num_layers = plain::intern("num_layers"),
           *bidirectional = plain::intern("bidirectional"),
           *hidden_size = plain::intern("hidden_size"),
           *proj_size = plain::intern("proj_size"), *bias = plain::intern("bias"),
           *dropout = plain::intern("dropout"), *training = plain::intern("training");
};
const PythonNames& names() {
  static const PythonNames* const instance = new PythonNames();
  return *instance;
}

// (h0, c0) from a non-None hx: the Tensor h0 for RNN and GRU, the pair (h0, c0) for LSTM.
std::optional<std::pair<OptTensor, OptTensor>> plain_states(py::handle hx, bool is_lstm,
                                                            const Tensor& input, int64_t states,
                                                            int64_t batch, int64_t state_width,
                                                            int64_t hidden_size) {
  if (!is_lstm) {
    auto h0 = plain_state(hx, input, {states, batch, state_width});
    if (!h0) return std::nullopt;
    return std::make_pair(OptTensor(std::move(h0)), OptTensor());
  }
  if (!PyTuple_Check(hx.ptr()) && !PyList_Check(hx.ptr())) return std::nullopt;
  const auto pair = py::reinterpret_borrow<py::sequence>(hx);
  if (pair.size() != 2) return std::nullopt;
  auto h0 = plain_state(pair[0], input, {states, batch, state_width});
  auto c0 = plain_state(pair[1], input, {states, batch, hidden_size});
  if (!h0 || !c0) return std::nullopt;
  return std::make_pair(OptTensor(std::move(h0)), OptTensor(std::move(c0)));
}

// torch.nn.utils.rnn.PackedSequence, looked up once.
PyObject* packed_sequence_type() {
  static PyObject* const type = plain::imported("torch.nn.utils.rnn", "PackedSequence");
  return type;
}

// A plain call's packed input: the data [S, C], batch_sizes (the Tensor and its Python
// object, which the output's PackedSequence shares) and its first entry.
struct PackedInput {
  Tensor data, batch_sizes;
  py::handle batch_sizes_obj;
  int64_t batch;
};

// `obj`'s parts when it is a PackedSequence (that class exactly) of plain Tensors whose
// batch_sizes is a non-empty 1-D int64 CPU tensor and whose indices are None: sorted, as
// pack_padded_sequence and pack_sequence leave it by default (enforce_sorted). Unsorted
// input needs its states permuted, which the Python forward does.
//
// Why in C++: with two threads at B=64, T=100, H=128 the Python forward took ~33 us more
// than the layer_stack call it makes on packed input (an RNN forward of ~0.9 ms): the
// layer's ~2 MiB of traffic evicts the interpreter's code and objects, and the same
// Python lines that take ~2 us in a loop of their own took ~20 us after the layer (ad hoc).
std::optional<PackedInput> plain_packed(py::handle obj) {
  if (Py_TYPE(obj.ptr()) != reinterpret_cast<PyTypeObject*>(packed_sequence_type()) ||
      PyTuple_GET_SIZE(obj.ptr()) != 4)
    return std::nullopt;
  const py::handle batch_sizes_obj = PyTuple_GET_ITEM(obj.ptr(), 1);
  auto data = plain_tensor(PyTuple_GET_ITEM(obj.ptr(), 0));
  auto batch_sizes = plain_tensor(batch_sizes_obj);
  if (!data || !batch_sizes || !py::handle(PyTuple_GET_ITEM(obj.ptr(), 2)).is_none() ||
      !py::handle(PyTuple_GET_ITEM(obj.ptr(), 3)).is_none() || batch_sizes->dim() != 1 ||
      batch_sizes->numel() == 0 || batch_sizes->scalar_type() != at::kLong ||
      !batch_sizes->device().is_cpu())
    return std::nullopt;
  const int64_t batch = batch_sizes->const_data_ptr<int64_t>()[0];
  return PackedInput{std::move(*data), std::move(*batch_sizes), batch_sizes_obj, batch};
}

// PackedSequence(output, batch_sizes, None, None), built as its tuple: what
// PackedSequence.__new__ makes from those arguments, without running its Python.
py::object packed_output(const Tensor& output, py::handle batch_sizes) {
  const py::tuple items = py::make_tuple(output, batch_sizes, py::none(), py::none());
  const py::tuple args = py::make_tuple(items);
  PyObject* result = PyTuple_Type.tp_new(
      reinterpret_cast<PyTypeObject*>(packed_sequence_type()), args.ptr(), nullptr);
  if (result == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(result);
}

// The module's parameters in RNNBase._flat_weights order, when that list still holds the
// registered parameters (what _current_flat_weights in fastrnn/modules.py checks).
std::optional<std::vector<Tensor>> current_flat_weights(py::handle module) {
  const py::list weights = attr(module, names().flat_weights);
  const py::list weight_names = attr(module, names().flat_weights_names);
  const py::dict parameters = attr(module, names().parameters);
  if (weights.empty() || weights.size() != weight_names.size()) return std::nullopt;
  std::vector<Tensor> tensors;
  tensors.reserve(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    PyObject* registered = PyDict_GetItemWithError(parameters.ptr(), weight_names[i].ptr());
    if (registered == nullptr && PyErr_Occurred()) throw py::error_already_set();
    if (registered != weights[i].ptr()) return std::nullopt;
    auto tensor = plain_tensor(weights[i]);
    if (!tensor) return std::nullopt;
    tensors.push_back(std::move(*tensor));
  }
  return tensors;
}

// module(input, hx): (output, h_n), or (output, (h_n, c_n)) for LSTM; None for a call that
// is not plain. layer_for and compiled_layer are fastrnn.backends.layer_for and
// fastrnn.ops.layer, looked up by the caller on each call (tests replace layer_for).
py::object plain_forward(py::handle module, py::handle input_obj, py::handle hx,
                         py::handle layer_for, py::handle compiled_layer) {
  const auto packed = plain_packed(input_obj);
  const auto input = packed ? std::optional<Tensor>(packed->data) : plain_tensor(input_obj);
  if (!input || input->dim() != (packed ? 2 : 3)) return py::none();
  auto weights = current_flat_weights(module);
  if (!weights || !same_kind(weights->front(), *input)) return py::none();

  // Packed input is time-major whatever batch_first says.
  const bool batch_first = !packed && attr(module, names().batch_first).cast<bool>();
  const int64_t batch = packed ? packed->batch : input->size(batch_first ? 0 : 1);
  const int64_t steps = packed ? input->size(0) : input->size(batch_first ? 1 : 0);
  const int64_t input_size = attr(module, names().input_size).cast<int64_t>();
  if (batch <= 0 || steps == 0 || input->size(-1) != input_size) return py::none();

  const auto mode = attr(module, names().mode).cast<std::string>();
  const bool is_lstm = mode == "LSTM";
  const auto num_layers = attr(module, names().num_layers).cast<int64_t>();
  const bool bidirectional = attr(module, names().bidirectional).cast<bool>();
  const auto proj_size = attr(module, names().proj_size).cast<int64_t>();
  const int64_t states = num_layers * (bidirectional ? 2 : 1);
  // Read only where needed: each attribute read is a sizeable part of a sine-shape call.
  int64_t hidden_size = 0, state_width = 0;
  if (!hx.is_none() || packed) {
    hidden_size = attr(module, names().hidden_size).cast<int64_t>();
    state_width = proj_size > 0 ? proj_size : hidden_size;
  }
  OptTensor h0, c0;
  if (!hx.is_none()) {
    auto given = plain_states(hx, is_lstm, *input, states, batch, state_width, hidden_size);
    if (!given) return py::none();
    std::tie(h0, c0) = std::move(*given);
  }
  // After the checks, as in _forward: a call that is wrong and also names a backend that
  // cannot run it raises the check's error there, not the backend's here.
  if (!plain::chosen_layer(module, *input, layer_for).is(compiled_layer)) return py::none();
  if (packed && !h0) {
    // layer_stack sizes zero states from padded input only; packed input's are made here,
    // as fastrnn/stack.py's run makes them for the Python forward.
    h0 = at::zeros({states, batch, state_width}, input->options());
    if (is_lstm) c0 = at::zeros({states, batch, hidden_size}, input->options());
  }

  const bool has_bias = attr(module, names().bias).cast<bool>();
  const auto dropout = attr(module, names().dropout).cast<double>();
  const bool training = attr(module, names().training).cast<bool>();
  std::tuple<Tensor, Tensor, Tensor> result;
  {
    py::gil_scoped_release no_gil;  // as torch.ops and fastrnn._C.layer_stack do
    const OptTensor batch_sizes = packed ? OptTensor(packed->batch_sizes) : std::nullopt;
    result = layer_stack_op().call(mode, *input, batch_sizes, h0, c0, *weights, num_layers,
                                   bidirectional, batch_first, has_bias, proj_size > 0,
                                   dropout, training);
  }
  auto& [output, h_n, c_n] = result;
  const py::object out =
      packed ? packed_output(output, packed->batch_sizes_obj) : py::cast(output);
  if (is_lstm) return py::make_tuple(out, py::make_tuple(h_n, c_n));
  return py::make_tuple(out, h_n);
}

}  // namespace

void def_plain_forward(py::module_& m) {
  m.def("plain_forward", &plain_forward, py::arg("module"), py::arg("input"), py::arg("hx"),
        py::arg("layer_for"), py::arg("compiled_layer"));
}

}  // namespace fastrnn
