// The package reader from C++: strict JSON, the preprocessing spec, the graph check and packages written here
// with libzip. The Python parity test (tests/test_native_package.py) covers the full corpus of hostile packages.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <filesystem>
#include <string>
#include <vector>

#include "dgs/error.hpp"
#include "dgs/package.hpp"
#include "sha256.hpp"
#include "strict_json.hpp"

namespace {

namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& call, dgs::Status status) {
  try {
    call();
  } catch (const dgs::Error& e) {
    EXPECT_EQ(e.status(), status) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

std::string json_error(const std::string& text) {
  try {
    dgs::json::parse(text);
  } catch (const dgs::json::Invalid& e) {
    return e.what();
  }
  return "";
}

TEST(StrictJson, RefusesDuplicateKeysAtAnyDepth) {
  EXPECT_EQ(json_error(R"({"a": {"b": 1, "c": 2, "b": 3}})"), "duplicate keys ['b']");
  EXPECT_EQ(json_error(R"({"t": 1, "s": 2, "t": 3, "s": 4})"), "duplicate keys ['s', 't']");
}

TEST(StrictJson, BoundsNestingWithoutRecursion) {
  std::string ok = std::string(dgs::json::max_depth, '[') + std::string(dgs::json::max_depth, ']');
  EXPECT_EQ(json_error(ok), "");
  std::string deep = std::string(200000, '[') + std::string(200000, ']');
  EXPECT_EQ(json_error(deep), "nested too deeply");
}

TEST(StrictJson, ReadsNumbersAsPythonDoes) {
  auto value = dgs::json::parse(R"([NaN, -Infinity, 1e400, 123456789012345678901234567890, -5, 2.5, true])");
  EXPECT_TRUE(std::isnan(value[0].get<double>()));
  EXPECT_EQ(value[1].get<double>(), -INFINITY);
  EXPECT_EQ(value[2].get<double>(), INFINITY);
  EXPECT_TRUE(dgs::json::is_big_integer(value[3]));
  EXPECT_EQ(dgs::json::type_name(value[3]), "an integer");
  EXPECT_EQ(dgs::json::big_integer_text(value[3]), "123456789012345678901234567890");
  EXPECT_EQ(dgs::json::type_name(value[4]), "an integer");
  EXPECT_EQ(dgs::json::type_name(value[5]), "a number");
  EXPECT_EQ(dgs::json::type_name(value[6]), "a boolean");
  EXPECT_EQ(dgs::json::dump(value[3]), "123456789012345678901234567890");
}

TEST(StrictJson, RefusesWhatPythonRefuses) {
  EXPECT_NE(json_error("\xEF\xBB\xBF{}").find("BOM"), std::string::npos);
  EXPECT_EQ(json_error("{\"a\": \"\xFF\"}"), "not UTF-8 (invalid start byte at byte 7)");
  EXPECT_EQ(json_error("{\"a\": \"\xED\xA0\x80\"}"), "not UTF-8 (invalid continuation byte at byte 7)");
  EXPECT_NE(json_error("{\"a\": 1} x"), "");
  EXPECT_NE(json_error("[01]"), "");
  EXPECT_NE(json_error("[nan]"), "");
}

TEST(StrictJson, ReprIsPythons) {
  EXPECT_EQ(dgs::json::repr_float(0.5), "0.5");
  EXPECT_EQ(dgs::json::repr_float(1e16), "1e+16");
  EXPECT_EQ(dgs::json::repr_float(1.5e-5), "1.5e-05");
  EXPECT_EQ(dgs::json::repr_float(224.0), "224.0");
  EXPECT_EQ(dgs::json::repr_string("it's"), "\"it's\"");
  EXPECT_EQ(dgs::json::repr(dgs::json::parse(R"({"a": [1, null, true]})")), "{'a': [1, None, True]}");
  EXPECT_EQ(dgs::json::group_digits(2097175), "2,097,175");
}

TEST(PreprocessSpec, FromJsonIsExact) {
  auto spec = dgs::PreprocessSpec::from_json(R"({"transform": "patch-select", "size": 224, "patch_size": 32,
      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "small_images": "pad"})");
  EXPECT_EQ(spec.transform, "patch-select");
  EXPECT_EQ(spec.grid(), 7);
  EXPECT_EQ(spec.small_images, "pad");
  auto refused = [](const std::string& text) {
    return error_of([&] { dgs::PreprocessSpec::from_json(text); }, dgs::Status::invalid_argument);
  };
  EXPECT_NE(refused(R"({"transform": "clip", "size": "224"})").find("size must be an integer"), std::string::npos);
  EXPECT_NE(refused(R"({"transform": "clip", "size": true})").find("size must be an integer"), std::string::npos);
  EXPECT_NE(refused(R"({"transform": "clip", "std": [0.2, NaN, 0.2]})").find("std must be 3 finite numbers"),
            std::string::npos);
  EXPECT_NE(refused(R"({"transform": "clip", "crop": 1})").find("unknown keys ['crop']"), std::string::npos);
  EXPECT_NE(refused(R"({"size": 224})").find("has no 'transform'"), std::string::npos);
  EXPECT_NE(refused(R"({"transform": "clip", "patch_size": 4})").find("patch_size must be"), std::string::npos);
}

TEST(PreprocessSpec, ValidateNamesTheField) {
  dgs::PreprocessSpec spec;
  spec.validate();
  spec.size = 4096;
  EXPECT_NE(error_of([&] { spec.validate(); }, dgs::Status::invalid_argument).find("size must be an integer from 16"),
            std::string::npos);
  spec = dgs::PreprocessSpec{};
  spec.transform = "patch-select";
  spec.patch_size = 30;
  EXPECT_EQ(error_of([&] { spec.validate(); }, dgs::Status::invalid_argument),
            "patch-select size 224 is not a multiple of patch_size 30");
}

TEST(OnnxGraph, RefusesBytesThatAreNotAModel) {
  std::vector<std::uint8_t> garbage{0xFF, 0xFF, 0xFF};
  EXPECT_NE(error_of([&] { dgs::check_onnx_graph(garbage, "image", "logit", 32, "m.dgs: model.onnx"); },
                     dgs::Status::model_package)
                .find("m.dgs: model.onnx: is not an ONNX model"),
            std::string::npos);
  // An empty message is a valid, empty model: refused for its interface.
  EXPECT_EQ(error_of([&] { dgs::check_onnx_graph({}, "image", "logit", 32, "m.dgs: model.onnx"); },
                     dgs::Status::model_package),
            "m.dgs: model.onnx: the graph's inputs are [], but the manifest describes one input 'image' "
            "([B, 3, 32, 32] float32)");
}

TEST(OnnxGraph, AMessageOfMillionsOfTinyFieldsIsRefusedBeforeItTakesGigabytes) {
  // 5,000,000 unknown varint fields of 3 bytes each (field 1000, value 0): 15 MB that would decode to 160 MB, and
  // a 2 GiB member of the same to 21 GiB.
  std::vector<std::uint8_t> fields;
  fields.reserve(15'000'000);
  for (int i = 0; i < 5'000'000; ++i) fields.insert(fields.end(), {0xC0, 0x3E, 0x00});
  const std::string error = error_of(
      [&] { dgs::check_onnx_graph(fields, "image", "logit", 32, "m.dgs: model.onnx"); }, dgs::Status::model_package);
  EXPECT_EQ(error, "m.dgs: model.onnx: has a protobuf message of more than 4,194,304 fields; refused (it would take "
                   "too much memory to check)");
  // Below the bound, the same fields are only unknown ones: the empty model is refused for its interface.
  fields.resize(3 * 1000);
  EXPECT_NE(error_of([&] { dgs::check_onnx_graph(fields, "image", "logit", 32, "m.dgs: model.onnx"); },
                     dgs::Status::model_package)
                .find("the graph's inputs are []"),
            std::string::npos);
}

std::uint32_t crc32(const std::string& data) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char byte : data) {
    crc ^= byte;
    for (int k = 0; k < 8; ++k) crc = crc & 1 ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
  }
  return ~crc;
}

void put(std::string& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>(value >> (8 * i) & 0xFF);
}

// A zip of stored members, written byte by byte (APPNOTE 4.3): local headers, central directory, end record.
std::string stored_zip(const std::vector<std::pair<std::string, std::string>>& members) {
  std::string out, directory;
  for (const auto& [name, data] : members) {
    std::uint32_t offset = static_cast<std::uint32_t>(out.size()), crc = crc32(data);
    auto size = static_cast<std::uint32_t>(data.size());
    put(out, 0x04034b50, 4);
    put(out, 20, 2), put(out, 0x800, 2), put(out, 0, 2), put(out, 0, 4);  // version, UTF-8 names, stored, time
    put(out, crc, 4), put(out, size, 4), put(out, size, 4), put(out, name.size(), 2), put(out, 0, 2);
    out += name + data;
    put(directory, 0x02014b50, 4);
    put(directory, 20, 2), put(directory, 20, 2), put(directory, 0x800, 2), put(directory, 0, 2);
    put(directory, 0, 4), put(directory, crc, 4), put(directory, size, 4), put(directory, size, 4);
    put(directory, name.size(), 2), put(directory, 0, 2), put(directory, 0, 2), put(directory, 0, 2);
    put(directory, 0, 2), put(directory, 0, 4), put(directory, offset, 4);
    directory += name;
  }
  std::uint32_t at = static_cast<std::uint32_t>(out.size());
  out += directory;
  put(out, 0x06054b50, 4), put(out, 0, 2), put(out, 0, 2), put(out, members.size(), 2), put(out, members.size(), 2);
  put(out, directory.size(), 4), put(out, at, 4), put(out, 0, 2);
  return out;
}

// A package written here: the manifest and members given, as stored zip entries.
class Package : public ::testing::Test {
 protected:
  void SetUp() override {
    folder = fs::temp_directory_path() / ("dgs-package-test-" + std::to_string(::getpid()));
    fs::create_directories(folder);
  }
  void TearDown() override { fs::remove_all(folder); }

  std::string write(const std::string& name, const std::string& manifest,
                    const std::vector<std::pair<std::string, std::string>>& members) {
    std::string path = (folder / name).string();
    std::vector<std::pair<std::string, std::string>> all{{"manifest.json", manifest}};
    all.insert(all.end(), members.begin(), members.end());
    std::string bytes = stored_zip(all);
    std::FILE* file = std::fopen(path.c_str(), "wb");
    std::fwrite(bytes.data(), 1, bytes.size(), file);
    std::fclose(file);
    return path;
  }

  static std::string manifest_for(const std::string& model, const std::string& extra = "") {
    return R"({"format": "dgs-model", "format_version": 2, "model": {"format": "onnx", "variants": {"fp32": )"
           R"({"file": "model.onnx"}}}, "preprocess": {"transform": "clip", "size": 32}, "files": {"model.onnx": )"
           R"({"sha256": ")" +
           dgs::sha256_hex(model.data(), model.size()) + R"(", "size": )" + std::to_string(model.size()) + "}}" +
           extra + "}";
  }

  fs::path folder;
};

TEST_F(Package, ReadsTheManifestAndChecksTheGraphAtLoad) {
  std::string path = write("empty graph.dgs", manifest_for("", R"(, "threshold": 0.25)"), {{"model.onnx", ""}});
  dgs::Manifest manifest = dgs::read_manifest(path);
  EXPECT_EQ(manifest.threshold, 0.25);
  EXPECT_EQ(manifest.preprocess.size, 32);
  EXPECT_EQ(manifest.default_precision(), "fp32");
  EXPECT_EQ(manifest.files.at("model.onnx").size, 0);
  EXPECT_NE(error_of([&] { dgs::ModelPackage::load(path); }, dgs::Status::model_package)
                .find(path + ": model.onnx: the graph's inputs are []"),
            std::string::npos);
  EXPECT_NE(error_of([&] { dgs::ModelPackage::load(path, "int8"); }, dgs::Status::model_package)
                .find(path + ": has no 'int8' variant (it has fp32)"),
            std::string::npos);
}

TEST_F(Package, RefusesWithThePackageAndTheFieldNamed) {
  std::string model = "x";
  auto refused = [&](const std::string& path) {
    return error_of([&] { dgs::read_manifest(path); }, dgs::Status::model_package);
  };
  std::string unlisted = write("unlisted.dgs", manifest_for(model), {{"model.onnx", model}, {"payload.bin", "y"}});
  EXPECT_EQ(refused(unlisted), unlisted + ": members ['payload.bin'] are not listed (with a checksum) in the manifest");
  std::string typed = write("typed.dgs", manifest_for(model, R"(, "threshold": "0.9")"), {{"model.onnx", model}});
  EXPECT_NE(refused(typed).find("field 'threshold' must be an integer or a number, got a string"), std::string::npos);
  std::string modified = write("modified.dgs", manifest_for(model), {{"model.onnx", "z"}});
  EXPECT_NE(error_of([&] { dgs::ModelPackage::load(modified); }, dgs::Status::model_package)
                .find("member 'model.onnx' fails its checksum"),
            std::string::npos);
  std::string directory = folder.string();
  EXPECT_EQ(refused(directory), directory + ": is a directory, not a file");
  EXPECT_EQ(refused(directory + "/absent.dgs"), directory + "/absent.dgs: no such file");
  std::string text = (folder / "page.dgs").string();
  std::FILE* file = std::fopen(text.c_str(), "w");
  std::fputs("<html>hello</html>", file);
  std::fclose(file);
  EXPECT_EQ(refused(text), text + ": not a dgs model package (not a zip file)");
}

}  // namespace
