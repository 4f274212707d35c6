// What the plain calls in C++ share (csrc/plain_forward.cpp for the layers,
// csrc/plain_cell.cpp for the *Cell classes): reading a module's attributes, telling plain
// Tensors from the rest, and the backend check.
#pragma once

#include <torch/extension.h>

#include <optional>

namespace fastrnn {
namespace plain {

// An interned Python string, made once by the caller (a function-local static) and never
// freed: freeing it at exit could run after the interpreter has gone. Attribute lookups
// with an interned name skip hashing and comparing it on every call.
PyObject* intern(const char* name);

// module.name (e.g. "torch.nn.utils.rnn", "PackedSequence"), imported by the caller once
// (a function-local static) and, like intern's strings, never freed.
PyObject* imported(const char* module, const char* name);

// obj.<name>; raises the Python error as a C++ exception.
pybind11::object attr(pybind11::handle obj, PyObject* name);

// The Tensor `obj` holds, when it is a Tensor that overrides no torch function (and no
// torch function mode is active).
std::optional<at::Tensor> plain_tensor(pybind11::handle obj);

// Same dtype and device.
bool same_kind(const at::Tensor& t, const at::Tensor& input);

// The plain Tensor `obj` holds when it has exactly `sizes` and the input's dtype and device.
std::optional<at::Tensor> plain_state(pybind11::handle obj, const at::Tensor& input,
                                      at::IntArrayRef sizes);

// layer_for(module.backend, input's device, input's dtype): the module's `layer` function
// (fastrnn.backends.layer_for) for the input's tensors.
pybind11::object chosen_layer(pybind11::handle module, const at::Tensor& input,
                              pybind11::handle layer_for);

}  // namespace plain
}  // namespace fastrnn
