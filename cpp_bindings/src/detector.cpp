// Detector: as dgs_sdk.Detector, inputs are taken a batch at a time; each batch is decoded and preprocessed on a
// few threads, the inputs that decoded are run through the backend together (in chunks of the graph's fixed batch,
// padded, when it has one), and every input gets its result in input order; an input that failed is an error row
// naming it, which never stops the others.
#include "dgs/detector.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <cmath>
#include <functional>
#include <mutex>
#include <new>
#include <sstream>
#include <thread>
#include <utility>

#include "dgs/limits.hpp"
#include "dgs/memory_budget.hpp"
#include "dgs/preprocess.hpp"

namespace dgs {

namespace {

constexpr int max_workers = 8;  // as dgs_sdk: one decoding thread per CPU, at most 8

// Python's repr of a float for the few values an error message shows (nan, inf, or a number).
std::string float_text(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  std::ostringstream out;
  out.precision(9);
  out << value;
  return out.str();
}

// numpy's logaddexp(0, x) (npy_logaddexp), so that probabilities agree with dgs_sdk.sigmoid to the last bits.
double log_add_exp_zero(double x) {
  constexpr double log_2 = 0.693147180559945309417232121458176568;
  if (x == 0.0) return log_2;
  double gap = 0.0 - x;
  if (gap > 0) return std::log1p(std::exp(-gap));
  if (gap <= 0) return x + std::log1p(std::exp(gap));
  return gap;  // NaN
}

// dgs_sdk.sigmoid: exp(-logaddexp(0, -logit)) in double, stable for large magnitudes.
double sigmoid(double logit) { return std::exp(-log_add_exp_zero(-logit)); }

// Runs `task(i)` for i in [0, n) on up to `workers` threads (fewer when the system will not start more). The first
// exception a task throws is rethrown here once every thread has stopped; the remaining tasks are skipped.
void run_parallel(std::size_t n, int workers, const std::function<void(std::size_t)>& task) {
  std::size_t threads = std::min<std::size_t>(n, static_cast<std::size_t>(std::max(1, workers)));
  std::atomic<std::size_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_lock;
  auto work = [&] {
    for (std::size_t i = next++; i < n; i = next++) {
      try {
        task(i);
      } catch (...) {
        std::lock_guard<std::mutex> hold(failure_lock);
        if (!failure) failure = std::current_exception();
        next = n;
      }
    }
  };
  std::vector<std::thread> pool;
  try {
    pool.reserve(threads > 0 ? threads - 1 : 0);
    for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  } catch (const std::exception&) {
    // std::system_error (EAGAIN) or bad_alloc: go on with the threads that started, and this one.
  }
  work();
  for (auto& thread : pool) thread.join();
  if (failure) std::rethrow_exception(failure);
}

// One input's way to a crop, and what became of it.
struct Prepared {
  cv::Mat crop;  // size x size x 3 uint8; empty when the input failed
  Status status = Status::ok;
  std::string error;
};

std::string named(const std::string& name, const std::string& message) {
  return message.compare(0, name.size(), name) == 0 ? message : name + ": " + message;
}

}  // namespace

struct Detector::Impl {
  ModelPackage package;
  std::unique_ptr<Backend> backend;
  std::string backend_name;
  PreprocessSpec spec;
  double threshold = 0.5;
  int batch_size = 32;
  int workers = 1;

  // Decodes and crops input `i` (named `name`) with `load`, turning any failure into an error row.
  template <typename Load>
  Prepared prepare(const std::string& name, Load&& load) const {
    Prepared p;
    try {
      // The decode's share of the memory budget is held until the crop is made, and the crop is copied out of
      // the decoded image (a centre crop is a view of it), so what a batch keeps is its crops, not its images.
      Reservation reservation(default_decode_budget());
      const cv::Mat crop = crop_image(load(reservation), spec);
      p.crop = crop.isSubmatrix() ? crop.clone() : crop;
    } catch (const Error& e) {
      p.status = e.status();
      p.error = named(name, e.what());
    } catch (const std::bad_alloc&) {
      p.status = Status::image_too_large;
      p.error = name + ": not enough memory to decode it";
    } catch (const std::exception& e) {  // a decoder bug must not cost the other images their results
      p.status = Status::internal;
      p.error = name + ": cannot be decoded (" + e.what() + ")";
    }
    if (p.status != Status::ok) p.crop.release();
    return p;
  }

  // The backend's logits for `count` normalised images at `input`, in chunks of its fixed batch (padded with
  // zeros, as dgs_sdk's Backend.run pads) or all at once.
  std::vector<float> infer(std::vector<float>& input, int count) {
    const std::size_t image_floats = 3 * static_cast<std::size_t>(spec.size) * spec.size;
    std::vector<float> logits(static_cast<std::size_t>(count));
    std::optional<int> fixed = backend->fixed_batch();
    if (!fixed) {
      backend->infer(input.data(), count, logits.data());
      return logits;
    }
    const int k = *fixed;
    std::vector<float> chunk_logits(static_cast<std::size_t>(k));
    for (int start = 0; start < count; start += k) {
      int n = std::min(k, count - start);
      const float* chunk = input.data() + start * image_floats;
      std::vector<float> padded;
      if (n < k) {
        padded.assign(k * image_floats, 0.0f);
        std::copy(chunk, chunk + n * image_floats, padded.begin());
        chunk = padded.data();
      }
      backend->infer(chunk, k, chunk_logits.data());
      std::copy(chunk_logits.begin(), chunk_logits.begin() + n, logits.begin() + start);
    }
    return logits;
  }

  // Results of one batch of inputs; `load(i)` gives input i's decoded RGB image and `name(i)` its name.
  void run_batch(std::size_t first, std::size_t count, const std::function<std::string(std::size_t)>& name,
                 const std::function<cv::Mat(std::size_t, Reservation&)>& load, std::vector<Result>& results) {
    std::vector<Prepared> prepared(count);
    std::vector<std::string> names(count);
    for (std::size_t j = 0; j < count; ++j) names[j] = name(first + j);
    run_parallel(count, workers, [&](std::size_t j) {
      prepared[j] = prepare(names[j], [&](Reservation& reservation) { return load(first + j, reservation); });
    });

    std::vector<std::size_t> good;
    for (std::size_t j = 0; j < count; ++j) {
      if (prepared[j].status == Status::ok) good.push_back(j);
    }
    const std::size_t image_floats = 3 * static_cast<std::size_t>(spec.size) * spec.size;
    std::vector<float> input(good.size() * image_floats);  // [B, 3, S, S]
    run_parallel(good.size(), workers, [&](std::size_t slot) {
      normalize(prepared[good[slot]].crop, spec, input.data() + slot * image_floats);
      prepared[good[slot]].crop.release();
    });
    std::vector<float> logits;
    if (!good.empty()) logits = infer(input, static_cast<int>(good.size()));

    std::size_t slot = 0;
    for (std::size_t j = 0; j < count; ++j) {
      Result& r = results[first + j];
      r.source = names[j];
      if (prepared[j].status != Status::ok) {
        r.status = prepared[j].status;
        r.error = std::move(prepared[j].error);
        continue;
      }
      float logit = logits[slot++];
      if (!std::isfinite(logit)) {
        r.status = Status::inference;
        r.error = r.source + ": the model's output for this image is not a finite number (" + float_text(logit) + ")";
        continue;
      }
      r.probability = sigmoid(static_cast<double>(logit));
      r.fake = r.probability >= threshold;
    }
  }

  std::vector<Result> detect(std::size_t n, const std::function<std::string(std::size_t)>& name,
                             const std::function<cv::Mat(std::size_t, Reservation&)>& load) {
    std::vector<Result> results(n);
    for (std::size_t first = 0; first < n; first += static_cast<std::size_t>(batch_size)) {
      run_batch(first, std::min(n - first, static_cast<std::size_t>(batch_size)), name, load, results);
    }
    return results;
  }

  // As dgs_sdk.backends.smoke_check: two grey images (zeros after normalisation) before anything is scored, so
  // that a package that cannot score images is refused at load.
  void smoke_check() {
    const std::size_t image_floats = 3 * static_cast<std::size_t>(spec.size) * spec.size;
    int n = backend->fixed_batch().value_or(std::min(2, backend->max_batch()));
    std::vector<float> zeros(static_cast<std::size_t>(n) * image_floats, 0.0f);
    std::vector<float> logits(static_cast<std::size_t>(n));
    backend->infer(zeros.data(), n, logits.data());
    for (float logit : logits) {
      if (!std::isfinite(logit)) {
        throw Error(Status::model_package, package.path() + ": " + package.variant().file +
                                               ": gives a non-finite logit (" + float_text(logit) +
                                               ") for a grey image; the model is broken");
      }
    }
  }

  void start(const DetectorOptions& options) {
    if (!backend) throw Error(Status::invalid_argument, "Detector: no backend given");
    spec = package.manifest().preprocess;
    backend_name = backend->name();
    threshold = options.threshold < 0 ? package.manifest().threshold : options.threshold;
    // One batch of float32 [B, 3, S, S] stays within max_batch_bytes (dgs_sdk.Detector's cap).
    std::int64_t by_bytes = limits::max_batch_bytes / (12LL * spec.size * spec.size);
    std::int64_t size = std::min<std::int64_t>(options.batch_size, by_bytes);
    if (!backend->fixed_batch()) size = std::min<std::int64_t>(size, backend->max_batch());
    batch_size = static_cast<int>(std::max<std::int64_t>(1, size));
    unsigned cpus = std::thread::hardware_concurrency();
    workers = std::min(max_workers, static_cast<int>(cpus ? cpus : 1));
    smoke_check();
  }
};

namespace {

void check_options(const DetectorOptions& options) {
  if (options.batch_size < 1) {
    throw Error(Status::invalid_argument, "batch_size must be at least 1, got " + std::to_string(options.batch_size));
  }
  if (std::isnan(options.threshold) || options.threshold > 1.0) {
    throw Error(Status::invalid_argument,
                "threshold must be a probability in [0, 1] (or negative for the package's), got " +
                    float_text(options.threshold));
  }
}

}  // namespace

Detector::Detector(const std::string& package_path, const DetectorOptions& options) : impl_(new Impl) {
  check_options(options);
  // The variant is chosen from the manifest first: only that one is read into memory.
  auto [name, precision] = choose_backend(read_manifest(package_path), options, package_path);
  impl_->package = ModelPackage::load(package_path, precision);
  impl_->backend = backend_kind(name).create(impl_->package, options);
  impl_->start(options);
}

Detector::Detector(ModelPackage package, std::unique_ptr<Backend> backend, const DetectorOptions& options)
    : impl_(new Impl) {
  check_options(options);
  impl_->package = std::move(package);
  impl_->backend = std::move(backend);
  impl_->start(options);
}

Detector::~Detector() = default;
Detector::Detector(Detector&&) noexcept = default;
Detector& Detector::operator=(Detector&&) noexcept = default;

std::vector<Result> Detector::detect_files(const std::vector<std::string>& paths, const std::string& confine_root) {
  return impl_->detect(
      paths.size(), [&](std::size_t i) { return paths[i]; },
      [&](std::size_t i, Reservation& reservation) { return decode_file(paths[i], reservation, confine_root); });
}

std::vector<Result> Detector::detect_encoded(const std::vector<EncodedImage>& images) {
  auto name = [](std::size_t i) { return "<bytes #" + std::to_string(i) + ">"; };
  return impl_->detect(images.size(), name, [&](std::size_t i, Reservation& reservation) {
    const EncodedImage& image = images[i];
    static const std::uint8_t nothing = 0;
    if (!image.data && image.size) throw Error(Status::invalid_argument, name(i) + ": data is a null pointer");
    return decode_bytes(image.data ? image.data : &nothing, image.data ? image.size : 0, name(i), reservation);
  });
}

std::vector<Result> Detector::detect_rgb(const std::vector<RgbImage>& images) {
  auto name = [](std::size_t i) { return "<rgb #" + std::to_string(i) + ">"; };
  return impl_->detect(images.size(), name, [&](std::size_t i, Reservation&) {  // the caller's pixels
    const RgbImage& image = images[i];
    if (!image.data) throw Error(Status::invalid_argument, name(i) + ": data is a null pointer");
    return rgb_image(image.data, image.width, image.height, image.stride, name(i));
  });
}

const ModelPackage& Detector::package() const { return impl_->package; }
const std::string& Detector::backend_name() const { return impl_->backend_name; }
double Detector::threshold() const { return impl_->threshold; }
int Detector::batch_size() const { return impl_->batch_size; }

}  // namespace dgs
