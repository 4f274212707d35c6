// Typed dispatcher handles for calling fastrnn's own ops from C++.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace fastrnn {

// The typed handle of op `name` (overload ""), looked up once per call site: callers keep
// the reference in a function-local static. The handle is never freed, like the
// dispatcher's own registrations.
template <class Sig>
const c10::TypedOperatorHandle<Sig>& op_handle(const char* name) {
  return *new c10::TypedOperatorHandle<Sig>(
      c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>());
}

}  // namespace fastrnn
