// fastrnn._C.plain_cell (csrc/plain_cell.cpp), added to the module by
// csrc/python_entry.cpp.
#pragma once

#include <torch/extension.h>

namespace fastrnn {

void def_plain_cell(pybind11::module_& m);

}  // namespace fastrnn
