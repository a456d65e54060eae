// The C API (dgs.h) over dgs::Detector. Every entry point catches everything: an exception becomes a status and
// a message (the detector's last error, or the calling thread's for calls without a detector).
#include "dgs/dgs.h"

#include <cmath>
#include <new>
#include <string>
#include <vector>

#include "dgs/detector.hpp"

struct dgs_detector {
  dgs::Detector detector;
  std::string last_error;
  std::vector<std::string> result_errors;  // of the last detect call, one per input
};

namespace {

// The error of the calling thread's last call that had no detector to keep it (dgs_detector_create, a NULL detector).
thread_local std::string thread_error;

dgs_status to_c(dgs::Status status) { return static_cast<dgs_status>(static_cast<int>(status)); }

// Runs `body`, turning an exception into a status with its message stored in `error`.
template <typename Body>
dgs_status guarded(std::string& error, Body&& body) noexcept {
  try {
    error.clear();
    body();
    return DGS_OK;
  } catch (const dgs::Error& e) {
    error = e.what();
    return to_c(e.status());
  } catch (const std::bad_alloc&) {
    error = "out of memory";
    return DGS_INTERNAL;
  } catch (const std::exception& e) {
    error = std::string("unexpected error: ") + e.what();
    return DGS_INTERNAL;
  } catch (...) {
    error = "unexpected error of an unknown kind";
    return DGS_INTERNAL;
  }
}

dgs_status refuse(std::string& error, const std::string& message) noexcept {
  try {
    error = message;
  } catch (...) {
  }
  return DGS_INVALID_ARGUMENT;
}

// The results of a call that could not run at all: every row says why, with the call's message.
void fail_all(dgs_detector* d, dgs_result* results, std::size_t n, dgs_status status) noexcept {
  for (std::size_t i = 0; results && i < n; ++i) results[i] = dgs_result{0.0, 0, status};
  if (!d || !results) return;
  try {
    d->result_errors.assign(n, d->last_error);
  } catch (...) {  // no memory for the copies: the rows still have their status, and dgs_last_error the message
    d->result_errors.clear();
  }
}

// Copies a detect call's results out, keeping their messages for dgs_result_error.
void publish(dgs_detector* d, const std::vector<dgs::Result>& rows, dgs_result* results) {
  d->result_errors.resize(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    results[i] = dgs_result{rows[i].status == dgs::Status::ok ? rows[i].probability : 0.0, rows[i].fake ? 1 : 0,
                            to_c(rows[i].status)};
    d->result_errors[i] = rows[i].error;
  }
}

// The checks every detect call makes before it runs; DGS_OK when it may.
dgs_status check_call(dgs_detector* detector, std::size_t n, const void* inputs, dgs_result* results,
                      const char* inputs_name) noexcept {
  if (!detector) return refuse(thread_error, "detector is NULL");
  detector->result_errors.clear();
  detector->last_error.clear();
  if (n == 0) return DGS_OK;
  if (!inputs) return refuse(detector->last_error, std::string(inputs_name) + " is NULL with n > 0");
  if (!results) return refuse(detector->last_error, "results is NULL with n > 0");
  return DGS_OK;
}

const std::string empty;

}  // namespace

extern "C" {

const char* dgs_version(void) { return DGS_VERSION; }

const char* dgs_status_string(dgs_status status) {
  int value = static_cast<int>(status);
  if (value < DGS_OK || value > DGS_INTERNAL) return "unknown";
  return dgs::status_name(static_cast<dgs::Status>(value));
}

void dgs_options_init(dgs_options* options) {
  if (!options) return;
  *options = dgs_options{nullptr, nullptr, 0, 0, -1.0, nullptr};
}

dgs_status dgs_detector_create(const char* package_path, const dgs_options* options, dgs_detector** out) {
  if (!out) return refuse(thread_error, "dgs_detector_create: out is NULL");
  *out = nullptr;
  if (!package_path) return refuse(thread_error, "dgs_detector_create: package_path is NULL");
  return guarded(thread_error, [&] {
    dgs::DetectorOptions o;
    if (options) {
      if (options->batch_size < 0) {
        throw dgs::Error(dgs::Status::invalid_argument,
                         "batch_size must be at least 1 (0: 32), got " + std::to_string(options->batch_size));
      }
      o.backend = options->backend ? options->backend : "";
      o.precision = options->precision && *options->precision ? options->precision : "auto";
      o.device = options->device;
      o.batch_size = options->batch_size ? options->batch_size : 32;
      o.threshold = options->threshold;
      o.cache_dir = options->cache_dir ? options->cache_dir : "";
    }
    *out = new dgs_detector{dgs::Detector(package_path, o), {}, {}};
  });
}

void dgs_detector_destroy(dgs_detector* detector) { delete detector; }

const char* dgs_last_error(const dgs_detector* detector) {
  return detector ? detector->last_error.c_str() : thread_error.c_str();
}

dgs_status dgs_detect_files(dgs_detector* detector, const char* const* paths, size_t n, dgs_result* results) {
  dgs_status status = check_call(detector, n, paths, results, "paths");
  if (status != DGS_OK) fail_all(detector, results, n, status);
  if (status != DGS_OK || n == 0) return status;
  status = guarded(detector->last_error, [&] {
    std::vector<std::string> list;
    list.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (!paths[i]) throw dgs::Error(dgs::Status::invalid_argument, "paths[" + std::to_string(i) + "] is NULL");
      list.emplace_back(paths[i]);
    }
    publish(detector, detector->detector.detect_files(list), results);
  });
  if (status != DGS_OK) fail_all(detector, results, n, status);
  return status;
}

dgs_status dgs_detect_encoded(dgs_detector* detector, const uint8_t* const* data, const size_t* sizes, size_t n,
                              dgs_result* results) {
  dgs_status status = check_call(detector, n, data, results, "data");
  if (status != DGS_OK) fail_all(detector, results, n, status);
  if (status != DGS_OK || n == 0) return status;
  if (!sizes) {
    status = refuse(detector->last_error, "sizes is NULL with n > 0");
    fail_all(detector, results, n, status);
    return status;
  }
  status = guarded(detector->last_error, [&] {
    std::vector<dgs::EncodedImage> list;
    list.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (!data[i] && sizes[i]) {
        throw dgs::Error(dgs::Status::invalid_argument,
                         "data[" + std::to_string(i) + "] is NULL with sizes[" + std::to_string(i) + "] > 0");
      }
      list.push_back(dgs::EncodedImage{data[i], sizes[i]});
    }
    publish(detector, detector->detector.detect_encoded(list), results);
  });
  if (status != DGS_OK) fail_all(detector, results, n, status);
  return status;
}

dgs_status dgs_detect_rgb(dgs_detector* detector, const dgs_image* images, size_t n, dgs_result* results) {
  dgs_status status = check_call(detector, n, images, results, "images");
  if (status != DGS_OK) fail_all(detector, results, n, status);
  if (status != DGS_OK || n == 0) return status;
  status = guarded(detector->last_error, [&] {
    std::vector<dgs::RgbImage> list;
    list.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (!images[i].data) {
        throw dgs::Error(dgs::Status::invalid_argument, "images[" + std::to_string(i) + "].data is NULL");
      }
      list.push_back(dgs::RgbImage{images[i].data, images[i].width, images[i].height, images[i].stride});
    }
    publish(detector, detector->detector.detect_rgb(list), results);
  });
  if (status != DGS_OK) fail_all(detector, results, n, status);
  return status;
}

const char* dgs_result_error(const dgs_detector* detector, size_t index) {
  if (!detector || index >= detector->result_errors.size()) return empty.c_str();
  return detector->result_errors[index].c_str();
}

double dgs_detector_threshold(const dgs_detector* detector) {
  return detector ? detector->detector.threshold() : std::nan("");
}

const char* dgs_detector_backend(const dgs_detector* detector) {
  return detector ? detector->detector.backend_name().c_str() : empty.c_str();
}

const char* dgs_detector_precision(const dgs_detector* detector) {
  return detector ? detector->detector.package().precision().c_str() : empty.c_str();
}

int dgs_detector_input_size(const dgs_detector* detector) {
  return detector ? detector->detector.package().manifest().preprocess.size : 0;
}

}  // extern "C"
