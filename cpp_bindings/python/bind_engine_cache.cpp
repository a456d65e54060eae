// Written next.
#include "bindings.hpp"

void dgs::python::bind_engine_cache(nanobind::module_&) {}
