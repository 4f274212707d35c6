#include "plain_call.h"

#include <torch/csrc/Device.h>
#include <torch/csrc/DynamicTypes.h>
#include <torch/csrc/autograd/python_variable.h>

namespace fastrnn {
namespace plain {
namespace {

namespace py = pybind11;

PyObject* torch_function_name() {
  static PyObject* const name = intern("__torch_function__");
  return name;
}

PyObject* disabled_torch_function() {
  static PyObject* const impl = imported("torch._C", "_disabled_torch_function_impl");
  return impl;
}

// Whether torch functions are overridden for `obj`, as torch._C._has_torch_function tests
// it (its C++ is not exported): a torch function mode is active, or obj's class has a
// __torch_function__ other than the disabled one (which nn.Parameter has).
bool overrides_torch_functions(py::handle obj) {
  if (at::impl::torch_function_mode_enabled()) return true;
  if (THPVariable_CheckExact(obj.ptr())) return false;
  PyObject* impl = PyObject_GetAttr(obj.ptr(), torch_function_name());
  if (impl == nullptr) {
    PyErr_Clear();
    return false;
  }
  Py_DECREF(impl);  // only its identity is compared
  return impl != disabled_torch_function();
}

}  // namespace

PyObject* intern(const char* name) { return PyUnicode_InternFromString(name); }

PyObject* imported(const char* module, const char* name) {
  return py::object(py::module_::import(module).attr(name)).release().ptr();
}

py::object attr(py::handle obj, PyObject* name) {
  PyObject* value = PyObject_GetAttr(obj.ptr(), name);
  if (value == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(value);
}

std::optional<at::Tensor> plain_tensor(py::handle obj) {
  if (!THPVariable_Check(obj.ptr()) || overrides_torch_functions(obj)) return std::nullopt;
  return THPVariable_Unpack(obj.ptr());
}

bool same_kind(const at::Tensor& t, const at::Tensor& input) {
  return t.scalar_type() == input.scalar_type() && t.device() == input.device();
}

std::optional<at::Tensor> plain_state(py::handle obj, const at::Tensor& input,
                                      at::IntArrayRef sizes) {
  auto state = plain_tensor(obj);
  if (!state || state->sizes() != sizes || !same_kind(*state, input)) return std::nullopt;
  return state;
}

py::object chosen_layer(py::handle module, const at::Tensor& input, py::handle layer_for) {
  static PyObject* const backend = intern("backend");
  const auto device = py::reinterpret_steal<py::object>(THPDevice_New(input.device()));
  if (!device) throw py::error_already_set();
  const py::handle dtype(reinterpret_cast<PyObject*>(torch::getTHPDtype(input.scalar_type())));
  return layer_for(attr(module, backend), device, dtype);
}

}  // namespace plain
}  // namespace fastrnn
