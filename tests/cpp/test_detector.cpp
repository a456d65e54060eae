// The detect path (batching, ordering, error rows, fixed batch, threshold, the three kinds of input) through the
// test-only mean backend, against what dgs_sdk gives with ONNX Runtime for the same packages and files
// (expected.json, written by make_fixtures.py).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dgs/backend.hpp"
#include "dgs/detector.hpp"
#include "dgs/package.hpp"
#include "rows.hpp"  // examples/dgs-detect: its CSV cells
#include "test_backend.hpp"

namespace {

using dgs::Status;
using nlohmann::json;

std::string fixtures_dir() {
  const char* env = std::getenv("DGS_FIXTURES");
  return env && *env ? env : DGS_FIXTURES;
}

// expected.json, or null when the fixtures were not written (no Python to write them).
const json& expected() {
  static const json data = [] {
    std::ifstream in(fixtures_dir() + "/expected.json");
    return in ? json::parse(in) : json();
  }();
  return data;
}

#define REQUIRE_FIXTURES()                                                                        \
  if (expected().is_null()) GTEST_SKIP() << "no fixtures in " << fixtures_dir()                   \
                                         << " (tests/cpp/make_fixtures.py writes them; ctest runs it)"

std::string package_path(const std::string& key) {
  return fixtures_dir() + "/packages/" + expected()["packages"][key]["file"].get<std::string>();
}

std::string photo(const std::string& name) { return fixtures_dir() + "/photos/" + name; }

std::vector<std::string> file_names() {
  std::vector<std::string> names;
  for (const auto& item : expected()["files"].items()) names.push_back(item.key());
  return names;
}

std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

Status status_of_kind(const json& kind) {
  static const std::map<std::string, Status> kinds{{"UnreadableImage", Status::unreadable_image},
                                                   {"ImageTooLarge", Status::image_too_large},
                                                   {"ImageTooSmall", Status::image_too_small}};
  return kind.is_null() ? Status::ok : kinds.at(kind.get<std::string>());
}

dgs::DetectorOptions mean_options(int batch_size = 32) {
  dgs::DetectorOptions options;
  options.backend = dgs::testing::mean_backend_name;
  options.batch_size = batch_size;
  return options;
}

double tolerance(const std::string& file) {
  bool resized = expected()["files"][file]["resized"].get<bool>();
  return expected()[resized ? "resized_tolerance" : "tolerance"].get<double>();
}

// One result against dgs_sdk's for the same input; `name` is the input's name in the result and its errors.
void expect_like_python(const dgs::Result& got, const json& want, const std::string& name, double tol,
                        double threshold) {
  SCOPED_TRACE(name);
  EXPECT_EQ(got.source, name);
  if (want["error"].is_null()) {
    ASSERT_EQ(got.status, Status::ok) << got.error;
    EXPECT_TRUE(got.error.empty());
    EXPECT_NEAR(got.probability, want["probability"].get<double>(), tol);
    if (std::abs(want["probability"].get<double>() - threshold) > tol) {
      EXPECT_EQ(got.fake ? "fake" : "real", want["label"].get<std::string>());
    }
  } else {
    EXPECT_NE(got.status, Status::ok);
    if (want.contains("kind")) EXPECT_EQ(got.status, status_of_kind(want["kind"])) << got.error;
    EXPECT_EQ(got.error.rfind(name + ": ", 0), 0u) << "the message names the input: " << got.error;
  }
}

void expect_files_like_python(const std::string& key, dgs::Detector& detector, const std::vector<std::string>& names) {
  std::vector<std::string> paths;
  for (const auto& name : names) paths.push_back(photo(name));
  auto results = detector.detect_files(paths);
  ASSERT_EQ(results.size(), names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    expect_like_python(results[i], expected()["results"][key]["files"][names[i]], paths[i], tolerance(names[i]),
                       detector.threshold());
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The registry and the choice of backend and variant: manifests built here, no package needed.

dgs::Manifest manifest_with(const std::vector<std::string>& precisions) {
  dgs::Manifest manifest;
  for (const auto& p : precisions) manifest.variants.push_back({p, "model." + p + ".onnx", "{}"});
  return manifest;
}

void register_once(const std::string& name, std::vector<std::string> precisions, std::string why = "") {
  auto names = dgs::backend_names();
  if (std::find(names.begin(), names.end(), name) != names.end()) return;
  dgs::BackendKind kind;
  kind.name = name;
  kind.precisions = std::move(precisions);
  if (!why.empty()) kind.unavailable = [why] { return why; };
  kind.create = [](const dgs::ModelPackage& package, const dgs::BackendOptions& options) {
    return std::unique_ptr<dgs::Backend>(dgs::testing::make_mean_backend(package, options.max_batch));
  };
  dgs::register_backend(std::move(kind));
}

template <typename F>
dgs::Error error_of(F&& f) {
  try {
    f();
  } catch (const dgs::Error& e) {
    return e;
  }
  ADD_FAILURE() << "no dgs::Error was thrown";
  return dgs::Error(Status::ok, "");
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(Backends, TheTestBackendIsRegisteredByName) {
  auto names = dgs::backend_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "test-mean"), names.end());
  EXPECT_EQ(dgs::backend_kind("test-mean").precisions, std::vector<std::string>{"fp32"});
}

TEST(Backends, AnUnknownNameIsRefusedWithTheKnownOnes) {
  auto e = error_of([] { dgs::backend_kind("no-such-backend"); });
  EXPECT_EQ(e.status(), Status::backend_unavailable);
  EXPECT_TRUE(contains(e.what(), "backend 'no-such-backend' is unknown (known: auto")) << e.what();
  EXPECT_TRUE(contains(e.what(), "test-mean")) << e.what();
}

TEST(Backends, OnnxRuntimeIsNotInCpp) {
  auto e = error_of([] { dgs::backend_kind("onnxruntime"); });
  EXPECT_EQ(e.status(), Status::backend_unavailable);
  EXPECT_TRUE(contains(e.what(), "no ONNX Runtime backend")) << e.what();
  EXPECT_TRUE(contains(e.what(), "Python SDK")) << e.what();
}

TEST(Backends, TensorRTIsThereOrTheMessageSaysThisBuildLacksIt) {
  auto names = dgs::backend_names();
  if (std::find(names.begin(), names.end(), "tensorrt") != names.end()) {
    EXPECT_EQ(names.front(), "tensorrt");  // first: "auto" takes it wherever it runs
    return;
  }
  auto e = error_of([] { dgs::backend_kind("tensorrt"); });
  EXPECT_TRUE(contains(e.what(), "this build of libdgs has no TensorRT backend")) << e.what();
}

TEST(Backends, RegisteringTwiceOrWithoutWhatABackendNeedsIsRefused) {
  dgs::BackendKind again = dgs::backend_kind("test-mean");
  EXPECT_EQ(error_of([&] { dgs::register_backend(again); }).status(), Status::invalid_argument);
  dgs::BackendKind nameless = again;
  nameless.name = "auto";
  EXPECT_EQ(error_of([&] { dgs::register_backend(nameless); }).status(), Status::invalid_argument);
  dgs::BackendKind odd = again;
  odd.name = "test-odd-precision";
  odd.precisions = {"fp8"};
  auto e = error_of([&] { dgs::register_backend(odd); });
  EXPECT_TRUE(contains(e.what(), "'fp8' is unknown")) << e.what();
}

TEST(ChooseBackend, AutoPrecisionTakesTheBackendsFastestVariantThePackageHas) {
  register_once("test-int8-first", {"int8-cpu", "fp32"});
  dgs::BackendOptions options;
  options.backend = "test-int8-first";
  EXPECT_EQ(dgs::choose_backend(manifest_with({"fp32", "int8-cpu"}), options, "m.dgs"),
            (std::pair<std::string, std::string>{"test-int8-first", "int8-cpu"}));
  EXPECT_EQ(dgs::choose_backend(manifest_with({"fp32"}), options, "m.dgs").second, "fp32");
  options.precision = "fp32";
  EXPECT_EQ(dgs::choose_backend(manifest_with({"fp32", "int8-cpu"}), options, "m.dgs").second, "fp32");
}

TEST(ChooseBackend, AVariantThePackageLacksNamesThoseItHas) {
  dgs::BackendOptions options;
  options.backend = "test-mean";
  options.precision = "fp16";
  auto e = error_of([&] { dgs::choose_backend(manifest_with({"fp32", "int8-cpu"}), options, "m.dgs"); });
  EXPECT_EQ(e.status(), Status::model_package);
  EXPECT_TRUE(contains(e.what(), "m.dgs")) << e.what();
  EXPECT_TRUE(contains(e.what(), "int8-cpu")) << e.what();
}

TEST(ChooseBackend, AnUnknownPrecisionIsABadArgument) {
  dgs::BackendOptions options;
  options.precision = "fp17";
  auto e = error_of([&] { dgs::choose_backend(manifest_with({"fp32"}), options, "m.dgs"); });
  EXPECT_EQ(e.status(), Status::invalid_argument);
  EXPECT_TRUE(contains(e.what(), "precision 'fp17' is unknown (known: auto, fp32, fp16, int8, int8-cpu)"))
      << e.what();
}

TEST(ChooseBackend, ABackendThatDoesNotRunTheVariantSaysWhatItRuns) {
  dgs::BackendOptions options;
  options.backend = "test-mean";
  options.precision = "int8-cpu";
  auto e = error_of([&] { dgs::choose_backend(manifest_with({"fp32", "int8-cpu"}), options, "m.dgs"); });
  EXPECT_EQ(e.status(), Status::backend_unavailable);
  EXPECT_TRUE(contains(e.what(), "the test-mean backend does not run the 'int8-cpu' variant (it runs fp32)"))
      << e.what();
}

TEST(ChooseBackend, AnUnavailableBackendSaysWhy) {
  register_once("test-unavailable", {"fp32"}, "no device of its kind here");
  dgs::BackendOptions options;
  options.backend = "test-unavailable";
  auto e = error_of([&] { dgs::choose_backend(manifest_with({"fp32"}), options, "m.dgs"); });
  EXPECT_EQ(e.status(), Status::backend_unavailable);
  EXPECT_TRUE(contains(e.what(), "backend 'test-unavailable' cannot be used here: no device of its kind here"))
      << e.what();
}

TEST(ChooseBackend, AutoSkipsUnavailableBackendsAndNamesThePackageWhenNoneRunsIt) {
  register_once("test-unavailable", {"fp32"}, "no device of its kind here");
  dgs::BackendOptions options;  // backend "" is "auto"
  auto chosen = dgs::choose_backend(manifest_with({"fp32"}), options, "m.dgs");
  EXPECT_NE(chosen.first, "test-unavailable");
  options.backend = "auto";
  auto e = error_of([&] { dgs::choose_backend(manifest_with({"fp16"}), options, "m.dgs"); });
  EXPECT_EQ(e.status(), Status::backend_unavailable);
  EXPECT_TRUE(contains(e.what(), "m.dgs: no available backend (")) << e.what();
  EXPECT_TRUE(contains(e.what(), "runs its variants (fp16)")) << e.what();
}

// ---------------------------------------------------------------------------------------------------------------
// Detection against dgs_sdk with ONNX Runtime.

TEST(Detector, FilesOfEveryPackageScoreAsInPython) {
  REQUIRE_FIXTURES();
  for (const std::string key : {"clip", "patch", "patch-pad", "fixed"}) {
    SCOPED_TRACE(key);
    dgs::Detector detector(package_path(key), mean_options(3));
    EXPECT_EQ(detector.backend_name(), "test-mean");
    EXPECT_EQ(detector.package().precision(), "fp32");
    expect_files_like_python(key, detector, file_names());
  }
}

TEST(Detector, TheVariantPackageRunsTheVariantTheBackendRuns) {
  REQUIRE_FIXTURES();
  dgs::Detector detector(package_path("variants"), mean_options());
  EXPECT_EQ(detector.package().precision(), "fp32");  // test-mean runs fp32 only; ONNX Runtime would take int8-cpu
  expect_files_like_python("variants", detector, file_names());
}

TEST(Detector, BatchesOfOneThreeAndMoreThanABatchKeepInputOrder) {
  REQUIRE_FIXTURES();
  auto names = file_names();
  for (int batch : {1, 3, 8}) {
    for (std::size_t count : {std::size_t{1}, std::size_t{3}, static_cast<std::size_t>(batch) + 1}) {
      SCOPED_TRACE("batch " + std::to_string(batch) + ", " + std::to_string(count) + " inputs");
      auto package = dgs::ModelPackage::load(package_path("clip"));
      auto backend = dgs::testing::make_mean_backend(package);
      auto* seen = backend.get();
      dgs::Detector detector(std::move(package), std::move(backend), mean_options(batch));
      EXPECT_EQ(detector.batch_size(), batch);
      // Inputs in reverse and repeated, errors among them: each result still lands in its input's place.
      std::vector<std::string> picked;
      for (std::size_t i = 0; i < count; ++i) picked.push_back(names[names.size() - 1 - (i * 5) % names.size()]);
      std::size_t at_load = seen->calls().size();
      expect_files_like_python("clip", detector, picked);
      std::vector<int> calls(seen->calls().begin() + at_load, seen->calls().end());
      EXPECT_LE(calls.size(), (count + batch - 1) / batch);  // a batch of errors only makes no call
      for (int n : calls) EXPECT_LE(n, batch);
    }
  }
}

TEST(Detector, AFixedBatchGraphIsRunInPaddedChunksOfItsBatch) {
  REQUIRE_FIXTURES();
  auto package = dgs::ModelPackage::load(package_path("fixed"));
  ASSERT_EQ(package.graph().batch, expected()["packages"]["fixed"]["batch"].get<std::int64_t>());
  auto backend = dgs::testing::make_mean_backend(package);
  auto* seen = backend.get();
  // The mean backend refuses any batch but the graph's: every call was padded or cut to 4.
  dgs::Detector detector(std::move(package), std::move(backend), mean_options(6));
  auto names = file_names();
  expect_files_like_python("fixed", detector, names);
  for (int n : seen->calls()) EXPECT_EQ(n, 4);
}

TEST(Detector, BatchSizeIsCappedByTheBackendsMaximum) {
  REQUIRE_FIXTURES();
  auto package = dgs::ModelPackage::load(package_path("clip"));
  auto backend = dgs::testing::make_mean_backend(package, 2);
  dgs::Detector detector(std::move(package), std::move(backend), mean_options(32));
  EXPECT_EQ(detector.batch_size(), 2);
  expect_files_like_python("clip", detector, file_names());
}

TEST(Detector, ThresholdIsThePackagesUnlessGiven) {
  REQUIRE_FIXTURES();
  dgs::Detector own(package_path("clip"), mean_options());
  EXPECT_DOUBLE_EQ(own.threshold(), expected()["packages"]["clip"]["threshold"].get<double>());
  auto options = mean_options();
  options.threshold = 0.0;  // every image is fake
  dgs::Detector given(package_path("clip"), options);
  EXPECT_EQ(given.threshold(), 0.0);
  for (const auto& r : given.detect_files({photo("astronaut.png"), photo("rocket.bmp")})) {
    EXPECT_EQ(r.status, Status::ok);
    EXPECT_TRUE(r.fake);
  }
  options.threshold = 1.0;
  dgs::Detector strict(package_path("clip"), options);
  for (const auto& r : strict.detect_files({photo("astronaut.png")})) EXPECT_FALSE(r.fake);
}

TEST(Detector, BadOptionsAreRefused) {
  REQUIRE_FIXTURES();
  auto options = mean_options(0);
  EXPECT_EQ(error_of([&] { dgs::Detector d(package_path("clip"), options); }).status(), Status::invalid_argument);
  options = mean_options();
  options.threshold = 1.5;
  auto e = error_of([&] { dgs::Detector d(package_path("clip"), options); });
  EXPECT_EQ(e.status(), Status::invalid_argument);
  EXPECT_TRUE(contains(e.what(), "threshold must be a probability in [0, 1]")) << e.what();
  options.threshold = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(error_of([&] { dgs::Detector d(package_path("clip"), options); }).status(), Status::invalid_argument);
}

TEST(Detector, EncodedBytesScoreAsTheirFiles) {
  REQUIRE_FIXTURES();
  dgs::Detector detector(package_path("patch"), mean_options(2));
  std::vector<std::string> names;
  std::vector<std::vector<std::uint8_t>> blobs;
  for (const auto& name : file_names()) {
    if (name == "x.jpg") continue;  // a folder has no bytes
    names.push_back(name);
    blobs.push_back(read_bytes(photo(name)));
  }
  std::vector<dgs::EncodedImage> inputs;
  for (const auto& blob : blobs) inputs.push_back({blob.data(), blob.size()});
  auto results = detector.detect_encoded(inputs);
  ASSERT_EQ(results.size(), names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    expect_like_python(results[i], expected()["results"]["patch"]["files"][names[i]],
                       "<bytes #" + std::to_string(i) + ">", tolerance(names[i]), detector.threshold());
  }
}

TEST(Detector, RgbBuffersScoreAsInPythonWithAnyStride) {
  REQUIRE_FIXTURES();
  for (const std::string key : {"clip", "patch"}) {
    dgs::Detector detector(package_path(key), mean_options(3));
    std::vector<std::string> names;
    std::vector<std::vector<std::uint8_t>> buffers;
    std::vector<dgs::RgbImage> inputs;
    for (const auto& item : expected()["rgb"].items()) {
      const auto& info = item.value();
      int w = info["width"], h = info["height"];
      auto pixels = read_bytes(fixtures_dir() + "/rgb/" + info["file"].get<std::string>());
      ASSERT_EQ(pixels.size(), static_cast<std::size_t>(w) * h * 3);
      // Rows padded to a stride wider than the image, as a camera's buffer may be.
      std::size_t stride = static_cast<std::size_t>(w) * 3 + 13;
      std::vector<std::uint8_t> padded(stride * h, 0xAB);
      for (int y = 0; y < h; ++y) std::copy_n(&pixels[y * w * 3], w * 3, &padded[y * stride]);
      names.push_back(item.key());
      buffers.push_back(std::move(padded));
      inputs.push_back({buffers.back().data(), w, h, stride});
    }
    auto results = detector.detect_rgb(inputs);
    ASSERT_EQ(results.size(), names.size());
    for (std::size_t i = 0; i < names.size(); ++i) {
      SCOPED_TRACE(key);
      expect_like_python(results[i], expected()["results"][key]["rgb"][names[i]], "<rgb #" + std::to_string(i) + ">",
                         tolerance(names[i]), detector.threshold());
    }
  }
}

TEST(Detector, BadInputsAreErrorRowsThatNeverStopTheOthers) {
  REQUIRE_FIXTURES();
  dgs::Detector detector(package_path("clip"), mean_options(2));
  std::uint8_t pixel[3] = {1, 2, 3};
  auto rgb = detector.detect_rgb({{nullptr, 4, 4, 0}, {pixel, 1, 1, 0}, {pixel, 0, 1, 0}});
  ASSERT_EQ(rgb.size(), 3u);
  EXPECT_EQ(rgb[0].status, Status::invalid_argument);
  EXPECT_EQ(rgb[0].error.rfind("<rgb #0>: ", 0), 0u) << rgb[0].error;
  EXPECT_EQ(rgb[1].status, Status::ok) << rgb[1].error;  // one pixel, resized to the model's input
  EXPECT_NE(rgb[2].status, Status::ok);
  EXPECT_EQ(rgb[2].error.rfind("<rgb #2>: ", 0), 0u) << rgb[2].error;

  auto missing = photo("no such file.png");
  auto files = detector.detect_files({missing, photo("empty.jpg"), photo("astronaut.png")});
  EXPECT_EQ(files[0].status, Status::unreadable_image);
  EXPECT_EQ(files[0].error.rfind(missing + ": ", 0), 0u) << files[0].error;
  EXPECT_EQ(files[1].status, Status::unreadable_image);
  EXPECT_EQ(files[2].status, Status::ok);

  auto none = detector.detect_encoded({{nullptr, 0}, {nullptr, 10}});
  EXPECT_EQ(none[0].status, Status::unreadable_image);
  EXPECT_EQ(none[1].status, Status::invalid_argument);
  EXPECT_TRUE(detector.detect_files({}).empty());
}

TEST(Detector, AFileThatLeadsOutOfTheConfiningFolderWhenOpenedIsAnErrorRow) {
  REQUIRE_FIXTURES();
  dgs::Detector detector(package_path("clip"), mean_options(2));
  char pattern[] = "/tmp/dgs-confined-XXXXXX";
  ASSERT_NE(mkdtemp(pattern), nullptr);
  const std::string folder = pattern, inside = folder + "/inside.png", link = folder + "/link.png";
  {
    const std::vector<std::uint8_t> bytes = read_bytes(photo("astronaut.png"));
    FILE* out = std::fopen(inside.c_str(), "wb");
    ASSERT_NE(out, nullptr);
    ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), out), bytes.size());
    std::fclose(out);
  }
  char* real_photo = realpath(photo("astronaut.png").c_str(), nullptr);
  ASSERT_NE(real_photo, nullptr);
  ASSERT_EQ(symlink(real_photo, link.c_str()), 0);  // as if swapped in after the folder was listed
  char* real_folder = realpath(folder.c_str(), nullptr);
  const std::string root = real_folder;
  auto confined = detector.detect_files({inside, link}, root);
  auto free = detector.detect_files({inside, link});
  std::remove(link.c_str());
  std::remove(inside.c_str());
  rmdir(folder.c_str());
  EXPECT_EQ(confined[0].status, Status::ok) << confined[0].error;
  EXPECT_EQ(confined[1].status, Status::unreadable_image);
  EXPECT_EQ(confined[1].error, link + ": leads to " + real_photo + ", outside the scanned folder " + root +
                                   "; not read");
  EXPECT_EQ(free[1].status, Status::ok) << free[1].error;  // without a root, links are read where they lead
  EXPECT_EQ(free[1].probability, confined[0].probability);
  std::free(real_photo);
  std::free(real_folder);
}

// A backend that gives a non-finite logit for bright images (a positive mean) and the mean for the others.
class NonFiniteBackend : public dgs::testing::MeanBackend {
 public:
  using MeanBackend::MeanBackend;
  void infer(const float* batch, int n, float* logits) override {
    MeanBackend::infer(batch, n, logits);
    for (int i = 0; i < n; ++i) {
      if (logits[i] > 0) logits[i] = std::numeric_limits<float>::quiet_NaN();
    }
  }
};

TEST(Detector, ANonFiniteLogitIsAnErrorRowForThatImageOnly) {
  REQUIRE_FIXTURES();
  auto package = dgs::ModelPackage::load(package_path("clip"));
  auto size = package.manifest().preprocess.size;
  dgs::Detector detector(std::move(package), std::make_unique<NonFiniteBackend>(size, std::nullopt, 32));
  std::vector<std::uint8_t> white(8 * 8 * 3, 255), black(8 * 8 * 3, 0);
  auto results = detector.detect_rgb({{black.data(), 8, 8, 0}, {white.data(), 8, 8, 0}, {black.data(), 8, 8, 0}});
  EXPECT_EQ(results[0].status, Status::ok);
  EXPECT_EQ(results[1].status, Status::inference);
  EXPECT_EQ(results[1].error, "<rgb #1>: the model's output for this image is not a finite number (nan)");
  EXPECT_EQ(results[2].status, Status::ok);
  EXPECT_LT(results[2].probability, 0.5);
}

class AlwaysInfinite : public dgs::testing::MeanBackend {
 public:
  using MeanBackend::MeanBackend;
  void infer(const float*, int n, float* logits) override {
    for (int i = 0; i < n; ++i) logits[i] = std::numeric_limits<float>::infinity();
  }
};

TEST(Detector, AModelThatCannotScoreAGreyImageIsRefusedAtLoad) {
  REQUIRE_FIXTURES();
  auto package = dgs::ModelPackage::load(package_path("clip"));
  auto size = package.manifest().preprocess.size;
  auto e = error_of([&] {
    dgs::Detector d(std::move(package), std::make_unique<AlwaysInfinite>(size, std::nullopt, 32));
  });
  EXPECT_EQ(e.status(), Status::model_package);
  EXPECT_TRUE(contains(e.what(), "gives a non-finite logit (inf) for a grey image")) << e.what();
}

class FailsSecondTime : public dgs::testing::MeanBackend {
 public:
  using MeanBackend::MeanBackend;
  void infer(const float* batch, int n, float* logits) override {
    if (++runs_ > 2) throw dgs::Error(Status::inference, "the device went away");
    MeanBackend::infer(batch, n, logits);
  }

 private:
  int runs_ = 0;
};

TEST(Detector, ABackendFailureStopsTheCallWithItsError) {
  REQUIRE_FIXTURES();
  auto package = dgs::ModelPackage::load(package_path("clip"));
  auto size = package.manifest().preprocess.size;
  dgs::Detector detector(std::move(package), std::make_unique<FailsSecondTime>(size, std::nullopt, 32),
                         mean_options(1));
  auto e = error_of([&] { detector.detect_files({photo("astronaut.png"), photo("rocket.bmp")}); });
  EXPECT_EQ(e.status(), Status::inference);
  EXPECT_STREQ(e.what(), "the device went away");
}

TEST(Detector, ACorruptOrMissingPackageIsRefused) {
  REQUIRE_FIXTURES();
  auto corrupt = package_path("corrupt");
  auto e = error_of([&] { dgs::Detector d(corrupt, mean_options()); });
  EXPECT_EQ(e.status(), Status::model_package);
  EXPECT_TRUE(contains(e.what(), corrupt)) << e.what();
  auto missing = fixtures_dir() + "/packages/missing.dgs";
  e = error_of([&] { dgs::Detector d(missing, mean_options()); });
  EXPECT_EQ(e.status(), Status::model_package);
  EXPECT_TRUE(contains(e.what(), missing)) << e.what();
}

TEST(Detector, MovesKeepTheirPackageAndBackend) {
  REQUIRE_FIXTURES();
  dgs::Detector first(package_path("clip"), mean_options());
  dgs::Detector second = std::move(first);
  EXPECT_EQ(second.backend_name(), "test-mean");
  EXPECT_EQ(second.detect_files({photo("astronaut.png")})[0].status, Status::ok);
}

// ---------------------------------------------------------------------------------------------------------------
// dgs-detect's cells, as dgs_sdk.results writes them (the values are Python's repr() of the same doubles).

TEST(DgsDetectRows, ProbabilitiesAreWrittenAsPythonsRepr) {
  const std::vector<std::pair<double, std::string>> cases{
      {0.5, "0.5"}, {1.0, "1.0"}, {0.0, "0.0"}, {-0.0, "-0.0"}, {0.0001, "0.0001"}, {1e-05, "1e-05"},
      {0.00012345, "0.00012345"}, {1.5e-07, "1.5e-07"}, {0.1, "0.1"}, {0.30000000000000004, "0.30000000000000004"},
      {0.3333333333333333, "0.3333333333333333"}, {0.6666666666666666, "0.6666666666666666"}, {1e+16, "1e+16"},
      {1000000000000000.0, "1000000000000000.0"}, {1.2345678901234568e+17, "1.2345678901234568e+17"},
      {5e-324, "5e-324"}, {1.7976931348623157e+308, "1.7976931348623157e+308"},
      {0.9999999999999999, "0.9999999999999999"}, {1e-300, "1e-300"}, {12345.678, "12345.678"},
      {9.9999e-05, "9.9999e-05"}, {3.2839432695173066e-133, "3.2839432695173066e-133"},
      {2.586079513346693e-272, "2.586079513346693e-272"}, {4.335199731352269e-74, "4.335199731352269e-74"},
      {-2.5, "-2.5"}};
  for (const auto& [value, repr] : cases) EXPECT_EQ(dgs_detect::python_repr(value), repr);
  EXPECT_EQ(dgs_detect::python_repr(std::nan("")), "nan");
}

TEST(DgsDetectRows, CellsAreNeutralisedThenQuotedAsPythonsCsvModuleQuotes) {
  EXPECT_EQ(dgs_detect::csv_line({"a.jpg", "0.5", "real", ""}), "a.jpg,0.5,real,\r\n");
  EXPECT_EQ(dgs_detect::csv_cell("=SUM(A1).png"), "'=SUM(A1).png");
  EXPECT_EQ(dgs_detect::csv_cell("'quoted"), "''quoted");
  for (const char* start : {"+", "-", "@", "\t"}) EXPECT_EQ(dgs_detect::csv_cell(std::string(start) + "x")[0], '\'');
  EXPECT_EQ(dgs_detect::csv_cell("\rx"), "\"'\rx\"");
  EXPECT_EQ(dgs_detect::csv_cell("a, \"b\".jpg"), "\"a, \"\"b\"\".jpg\"");
  EXPECT_EQ(dgs_detect::csv_cell("line\nbreak"), "\"line\nbreak\"");
  EXPECT_EQ(dgs_detect::csv_cell("x=1;y"), "x=1;y");
}

}  // namespace
