// Written next.
#include "bindings.hpp"

void dgs::python::bind_preprocess(nanobind::module_&) {}
