// The parts of the dgs_native module, one file each.
#pragma once

#include <nanobind/nanobind.h>

namespace dgs::python {

void bind_preprocess(nanobind::module_& m);    // bind_preprocess.cpp
void bind_package(nanobind::module_& m);       // bind_package.cpp
void bind_engine_cache(nanobind::module_& m);  // bind_engine_cache.cpp

}  // namespace dgs::python
