// fastrnn._C.plain_cell: one step of FusedRNNCell / FusedGRUCell / FusedLSTMCell for the
// plain call, in C++: a 2-D Tensor input, and hx either None or states of exactly
// [batch, hidden_size] with the input's dtype and device.
//
// Why: a cell step is one layer op call over one time step, ~2.4 us at the sine-wave shape
// (B=1, H=16), and the Python of _FusedCell's checks (argument checks, the zero state, the
// backend choice) took ~7 us more; ~9 us at B=64, H=128 (one thread, torch 2.13). Decode
// loops pay that on every step. Here the same checks run in C++ on the module's attributes,
// then the layer op runs through its typed dispatcher handle (autograd included).
//
// As in csrc/plain_forward.cpp, every call that is not plain gets None back with nothing
// done: unbatched or empty input, a size, dtype or device that does not match, a weight
// that is not a registered plain parameter (a parametrization, say), an argument or mode
// that overrides torch functions, a backend other than the compiled one. fastrnn/modules.py
// then runs its Python step, which raises torch.nn's errors or takes the other paths. The
// caller deals with autocast and torch.compile before calling it.
#include "plain_cell.h"

#include <optional>
#include <string>
#include <tuple>

#include "op_handle.h"
#include "plain_call.h"

namespace fastrnn {
namespace {

namespace py = pybind11;
using at::Tensor;

// The module attributes and parameter names this file reads, interned once.
struct PythonNames {
  PyObject *parameters = plain::intern("_parameters"),
           *input_size = plain::intern("input_size"),
           *hidden_size = plain::intern("hidden_size"), *weight_ih = plain::intern("weight_ih"),
           *weight_hh = plain::intern("weight_hh"), *bias_ih = plain::intern("bias_ih"),
           *bias_hh = plain::intern("bias_hh");
};
const PythonNames& names() {
  static const PythonNames* const instance = new PythonNames();
  return *instance;
}

// The registered parameter `name` as a plain Tensor of the input's dtype and device, or
// nullopt for a bias registered as None; false when it is anything else (missing from
// _parameters, as under a parametrization, or a weight registered as None).
bool registered(PyObject* parameters, PyObject* name, bool may_be_none, const Tensor& input,
                OptTensor& out) {
  PyObject* value = PyDict_GetItemWithError(parameters, name);
  if (value == nullptr) {
    if (PyErr_Occurred()) throw py::error_already_set();
    return false;
  }
  if (value == Py_None) {
    out = std::nullopt;
    return may_be_none;
  }
  auto tensor = plain::plain_tensor(value);
  if (!tensor || !plain::same_kind(*tensor, input)) return false;
  out = std::move(*tensor);
  return true;
}

// module(input, hx) as _FusedCell._step returns it: (h, c) for LSTM, (h, None) otherwise;
// None for a call that is not plain. mode is the module's _cell_mode(); layer_for and
// compiled_layer are fastrnn.backends.layer_for and fastrnn.ops.layer.
py::object plain_cell(py::handle module, const std::string& mode, py::handle input_obj,
                      py::handle hx, py::handle layer_for, py::handle compiled_layer) {
  const bool is_lstm = mode == "LSTM";
  if (!is_lstm && mode != "GRU" && mode != "RNN_TANH" && mode != "RNN_RELU") return py::none();
  const auto input = plain::plain_tensor(input_obj);
  if (!input || input->dim() != 2) return py::none();
  const int64_t batch = input->size(0);
  if (batch == 0 || input->size(1) != plain::attr(module, names().input_size).cast<int64_t>())
    return py::none();

  const py::object parameters = plain::attr(module, names().parameters);
  if (!PyDict_Check(parameters.ptr())) return py::none();
  OptTensor w_ih, w_hh, b_ih, b_hh;
  if (!registered(parameters.ptr(), names().weight_ih, false, *input, w_ih) ||
      !registered(parameters.ptr(), names().weight_hh, false, *input, w_hh) ||
      !registered(parameters.ptr(), names().bias_ih, true, *input, b_ih) ||
      !registered(parameters.ptr(), names().bias_hh, true, *input, b_hh))
    return py::none();

  const int64_t hidden = plain::attr(module, names().hidden_size).cast<int64_t>();
  Tensor h0, c0;
  if (hx.is_none()) {
    h0 = c0 = at::zeros({batch, hidden}, input->options());
  } else if (is_lstm) {
    if (!PyTuple_Check(hx.ptr()) && !PyList_Check(hx.ptr())) return py::none();
    const auto pair = py::reinterpret_borrow<py::sequence>(hx);
    if (pair.size() != 2) return py::none();
    auto h = plain::plain_state(pair[0], *input, {batch, hidden});
    auto c = plain::plain_state(pair[1], *input, {batch, hidden});
    if (!h || !c) return py::none();
    h0 = std::move(*h);
    c0 = std::move(*c);
  } else {
    auto h = plain::plain_state(hx, *input, {batch, hidden});
    if (!h) return py::none();
    h0 = std::move(*h);
  }
  // After the checks, as in _uncast_step: a call that is wrong and also names a backend
  // that cannot run it raises the check's error there, not the backend's here.
  if (!plain::chosen_layer(module, *input, layer_for).is(compiled_layer)) return py::none();

  Tensor h_n, c_n;
  {
    py::gil_scoped_release no_gil;  // as torch.ops and fastrnn._C's layer ops do
    const Tensor steps = input->unsqueeze(0);  // one time step
    if (is_lstm) {
      std::tie(std::ignore, h_n, c_n) = lstm_layer_op().call(
          steps, std::nullopt, h0, c0, *w_ih, *w_hh, b_ih, b_hh, std::nullopt, false, false);
    } else if (mode == "GRU") {
      std::tie(std::ignore, h_n) =
          gru_layer_op().call(steps, std::nullopt, h0, *w_ih, *w_hh, b_ih, b_hh, false, false);
    } else {
      std::tie(std::ignore, h_n) = rnn_layer_op().call(
          steps, std::nullopt, h0, *w_ih, *w_hh, b_ih, b_hh, mode == "RNN_RELU", false, false);
    }
  }
  if (is_lstm) return py::make_tuple(h_n, c_n);
  return py::make_tuple(h_n, py::none());
}

}  // namespace

void def_plain_cell(py::module_& m) {
  m.def("plain_cell", &plain_cell, py::arg("module"), py::arg("mode"), py::arg("input"),
        py::arg("hx"), py::arg("layer_for"), py::arg("compiled_layer"));
}

}  // namespace fastrnn
