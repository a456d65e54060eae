// dgs_native: the native core for the Python SDK (dgs_sdk uses it for preprocessing when it is importable).
// Errors of the core arrive as dgs_native.Error subclasses named after their status; dgs_sdk maps them onto its
// own exceptions.
#include <nanobind/nanobind.h>

#include <array>

#include "bindings.hpp"
#include "dgs/error.hpp"

namespace nb = nanobind;

namespace {

// One Python exception type per status, indexed by the status value.
std::array<PyObject*, 10> error_types{};

void translate(const std::exception_ptr& error, void*) {
  try {
    std::rethrow_exception(error);
  } catch (const dgs::Error& e) {
    auto index = static_cast<std::size_t>(e.status());
    PyErr_SetString(index < error_types.size() && error_types[index] ? error_types[index] : PyExc_RuntimeError,
                    e.what());
  }
}

}  // namespace

NB_MODULE(dgs_native, m) {
  m.doc() = "The native core of dgs: package reader, decoding, preprocessing, engine cache key.";
  m.attr("__version__") = DGS_VERSION;
  // The interface version dgs_sdk checks before using the module; raise it when a function changes.
  m.attr("API") = 1;

  PyObject* base = PyErr_NewException("dgs_native.Error", PyExc_RuntimeError, nullptr);
  m.attr("Error") = nb::steal(base);
  static constexpr std::array<const char*, 10> names{
      nullptr, "InvalidArgument", "UnreadableImage", "ImageTooLarge", "ImageTooSmall", "ModelPackageError",
      "BackendUnavailable", "InferenceError", "IOError", "InternalError"};
  for (std::size_t i = 1; i < names.size(); ++i) {
    std::string qualified = std::string("dgs_native.") + names[i];
    // ImageTooLarge and ImageTooSmall are unreadable images, as in dgs_sdk.errors.
    PyObject* parent = (i == 3 || i == 4) ? error_types[2] : base;
    error_types[i] = PyErr_NewException(qualified.c_str(), parent, nullptr);
    m.attr(names[i]) = nb::borrow(error_types[i]);
  }
  error_types[0] = base;
  nb::register_exception_translator(translate);

  dgs::python::bind_preprocess(m);
  dgs::python::bind_package(m);
  dgs::python::bind_engine_cache(m);
}
