// fastrnn._C.plain_forward (csrc/plain_forward.cpp), added to the module by
// csrc/python_entry.cpp.
#pragma once

#include <torch/extension.h>

namespace fastrnn {

void def_plain_forward(pybind11::module_& m);

}  // namespace fastrnn
