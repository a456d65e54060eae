// The .dgs model package reader, mirroring dgs_sdk/package.py and dgs_sdk/onnx_graph.py: the same limits and
// the same refusals (a package Python refuses, C++ refuses), errors naming the package and the field or member.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "dgs/preprocess.hpp"

namespace dgs {

inline constexpr int package_format_version = 2;

struct Variant {
  std::string precision;  // "fp32", "fp16", "int8" or "int8-cpu"
  std::string file;       // its ONNX member
  std::string accuracy_json = "{}";  // free-form figures measured against fp32 at export
};

struct MemberEntry {
  std::string sha256;
  std::int64_t size = 0;
};

struct Manifest {
  int format_version = package_format_version;
  PreprocessSpec preprocess;
  std::vector<Variant> variants;  // in the manifest's order
  double threshold = 0.5;
  std::string threshold_source = "default";
  std::string architecture_json = "{}";
  std::string provenance_json = "{}";
  std::string input_name = "image";
  std::string output_name = "logit";
  std::map<std::string, MemberEntry> files;
  std::string created;

  // fp32 when the package has it, else the first variant listed.
  std::string default_precision() const;
  // The variant `precision`, or Error(model_package) naming `source` and the variants there are.
  const Variant& variant(const std::string& precision, const std::string& source = "") const;
};

// What the graph check learns beyond the manifest: the fixed batch size, or none when the batch axis is dynamic.
struct GraphInterface {
  std::optional<std::int64_t> batch;
};

// Checks an ONNX graph as dgs_sdk.onnx_graph.check_onnx_graph does (no external data, standard operators, no
// control flow, bounded node count, the interface the manifest promises); `where` starts every message.
GraphInterface check_onnx_graph(const std::vector<std::uint8_t>& model, const std::string& input_name,
                                const std::string& output_name, int size, const std::string& where);

class ModelPackage {
 public:
  // Reads a package: a regular file, bounded zip, manifest, every member's size and sha256, and the ONNX graph
  // of variant `precision` (the default one when empty), whose bytes are kept. Throws Error(model_package).
  static ModelPackage load(const std::string& path, const std::string& precision = "");

  const std::string& path() const { return path_; }
  const Manifest& manifest() const { return manifest_; }
  // The kept variant: its precision, ONNX bytes, sha256 (the manifest's, verified) and checked interface.
  const std::string& precision() const { return precision_; }
  const std::vector<std::uint8_t>& model_bytes() const { return model_; }
  const std::string& model_sha256() const { return manifest_.files.at(variant().file).sha256; }
  const Variant& variant() const { return manifest_.variant(precision_); }
  const GraphInterface& graph() const { return graph_; }

 private:
  std::string path_;
  Manifest manifest_;
  std::string precision_;
  std::vector<std::uint8_t> model_;
  GraphInterface graph_;
};

// The validated manifest of a package, its members' sizes checked against the zip but not read.
Manifest read_manifest(const std::string& path);

}  // namespace dgs
