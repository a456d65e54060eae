// Written next.
#include "bindings.hpp"

void dgs::python::bind_package(nanobind::module_&) {}
