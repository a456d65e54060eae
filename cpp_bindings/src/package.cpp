// The .dgs package reader, step for step as dgs_sdk/package.py: a regular file of bounded size, the zip's
// central directory bounded from its end records before libzip parses it, members counted and unique, the
// manifest bounded, parsed strictly and typed exactly, every member listed with its size and sha256, sizes
// agreeing between zip and manifest, the contents bounded in all, every member's sha256 streamed (never reading
// more than the zip declares) and the kept variant's ONNX graph checked. Messages name the package and the
// field or member, in dgs_sdk's words.
#include "dgs/package.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <set>

#include "dgs/error.hpp"
#include "dgs/limits.hpp"
#include "preprocess_spec.hpp"
#include "sha256.hpp"
#include "strict_json.hpp"

namespace dgs {
namespace {

using json::Json;

const char* const manifest_name = "manifest.json";
const char* const format_name = "dgs-model";
const char* const precisions[] = {"fp32", "fp16", "int8", "int8-cpu"};
constexpr std::size_t chunk_bytes = 1 << 20;

Error package_error(const std::string& message) { return Error(Status::model_package, message); }

bool known_precision(const std::string& precision) {
  return std::any_of(std::begin(precisions), std::end(precisions), [&](const char* p) { return precision == p; });
}

std::string list_repr(const std::vector<std::string>& items) {
  std::string out = "[";
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + json::repr_string(items[i]);
  return out + "]";
}

// --- the file --------------------------------------------------------------------------------------------------

// A file descriptor closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// files.open_regular: a regular file of at most max_bytes, opened without blocking and never opened otherwise.
std::int64_t open_regular(const std::string& name, std::int64_t max_bytes, Fd& out) {
  struct stat st {};
  auto failed = [&](int error) -> Error {
    if (error == ENOENT) {
      struct stat link {};
      if (::lstat(name.c_str(), &link) == 0 && S_ISLNK(link.st_mode)) {
        std::string target(4096, '\0');
        ssize_t length = ::readlink(name.c_str(), target.data(), target.size());
        target.resize(length > 0 ? static_cast<std::size_t>(length) : 0);
        return package_error(name + ": broken symbolic link (target " + json::repr_string(target) +
                             " does not exist)");
      }
      return package_error(name + ": no such file");
    }
    if (error == EACCES || error == EPERM) return package_error(name + ": permission denied");
    return package_error(name + ": cannot be opened (" + std::strerror(error) + ")");
  };
  if (::stat(name.c_str(), &st) != 0) throw failed(errno);
  if (S_ISDIR(st.st_mode)) throw package_error(name + ": is a directory, not a file");
  if (!S_ISREG(st.st_mode)) {
    throw package_error(name + ": is not a regular file (a device, pipe or socket); it was not opened");
  }
  if (st.st_size > max_bytes) {
    throw package_error(name + ": file too large (" + json::group_digits(st.st_size) + " bytes; the limit is " +
                        json::group_digits(max_bytes) + ")");
  }
  out.fd = ::open(name.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (out.fd < 0) throw failed(errno);
  struct stat opened {};
  if (::fstat(out.fd, &opened) != 0 || opened.st_dev != st.st_dev || opened.st_ino != st.st_ino ||
      opened.st_size > max_bytes) {
    throw package_error(name + ": changed while it was being opened");
  }
  return opened.st_size;
}

std::string read_at(int fd, std::int64_t offset, std::size_t size, const std::string& name) {
  std::string data(size, '\0');
  std::size_t done = 0;
  while (done < size) {
    ssize_t got = ::pread(fd, data.data() + done, size - done, offset + static_cast<std::int64_t>(done));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw package_error(name + ": cannot be read (" + std::strerror(errno) + ")");
    }
    if (got == 0) break;
    done += static_cast<std::size_t>(got);
  }
  data.resize(done);
  return data;
}

std::uint64_t little_endian(const std::string& data, std::size_t at, int bytes) {
  std::uint64_t value = 0;
  for (int i = bytes - 1; i >= 0; --i) value = value << 8 | static_cast<unsigned char>(data[at + i]);
  return value;
}

// _zip_directory_size: entries and bytes of the central directory from the end records, the largest count any
// reader might take (the classic end record's, and the ZIP64 end records before the locator and where it points).
std::pair<std::uint64_t, std::uint64_t> zip_directory_size(int fd, std::int64_t size, const std::string& name) {
  constexpr std::int64_t eocd_size = 22, locator_size = 20, zip64_end_size = 56;
  std::int64_t tail = std::min<std::int64_t>(size, eocd_size + 65535);
  std::string data = read_at(fd, size - tail, static_cast<std::size_t>(tail), name);
  std::size_t at = data.rfind(std::string("PK\x05\x06", 4));
  if (at == std::string::npos || static_cast<std::int64_t>(at) + eocd_size > static_cast<std::int64_t>(data.size())) {
    throw package_error(name + ": not a dgs model package (not a zip file)");
  }
  std::vector<std::pair<std::uint64_t, std::uint64_t>> counts;
  std::uint64_t entries = little_endian(data, at + 10, 2), directory = little_endian(data, at + 12, 4);
  if (entries != 0xFFFF && directory != 0xFFFFFFFF) counts.emplace_back(entries, directory);
  std::int64_t locator = size - tail + static_cast<std::int64_t>(at) - locator_size;
  if (locator >= 0) {
    std::string raw = read_at(fd, locator, locator_size, name);
    if (raw.size() == locator_size && raw.compare(0, 4, "PK\x06\x07", 4) == 0) {
      auto pointed = static_cast<std::int64_t>(little_endian(raw, 8, 8));
      std::set<std::int64_t> records{locator - zip64_end_size, pointed};
      for (std::int64_t record : records) {
        if (record < 0 || record > size - zip64_end_size) continue;
        std::string end = read_at(fd, record, zip64_end_size, name);
        if (end.size() == zip64_end_size && end.compare(0, 4, "PK\x06\x06", 4) == 0) {
          counts.emplace_back(little_endian(end, 32, 8), little_endian(end, 40, 8));
        }
      }
    }
  }
  if (counts.empty()) throw package_error(name + ": damaged zip (its ZIP64 end record is missing)");
  std::uint64_t most_entries = 0, most_bytes = 0;
  for (const auto& [e, d] : counts) {
    most_entries = std::max(most_entries, e);
    most_bytes = std::max(most_bytes, d);
  }
  return {most_entries, most_bytes};
}

// Digits with thousands separators for any unsigned 64-bit count.
std::string group_unsigned(std::uint64_t value) {
  if (value <= static_cast<std::uint64_t>(std::numeric_limits<long long>::max())) {
    return json::group_digits(static_cast<long long>(value));
  }
  std::string digits = std::to_string(value), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

struct ZipCloser {
  void operator()(zip_t* archive) const { zip_discard(archive); }
};
struct ZipFileCloser {
  void operator()(zip_file_t* file) const { zip_fclose(file); }
};
using Zip = std::unique_ptr<zip_t, ZipCloser>;

Error damaged(const std::string& name) {
  return package_error(name + ": not a dgs model package (not a zip file, or a damaged one)");
}

// _open_zip: the regular file, its directory bounded, then libzip.
Zip open_zip(const std::string& name) {
  Fd file;
  std::int64_t size = open_regular(name, limits::max_package_bytes, file);
  auto [entries, directory] = zip_directory_size(file.fd, size, name);
  if (entries > static_cast<std::uint64_t>(limits::max_members) ||
      directory > static_cast<std::uint64_t>(limits::max_zip_directory_bytes)) {
    throw package_error(name + ": holds " + group_unsigned(entries) + " members in a directory of " +
                        group_unsigned(directory) + " bytes; a model package has at most " +
                        std::to_string(limits::max_members) + " members");
  }
  int fd = ::dup(file.fd);
  if (fd < 0) throw package_error(name + ": cannot be read (" + std::strerror(errno) + ")");
  int error = 0;
  zip_t* archive = zip_fdopen(fd, ZIP_RDONLY, &error);
  if (!archive) {
    ::close(fd);
    throw damaged(name);
  }
  return Zip(archive);
}

struct Entry {
  zip_uint64_t index = 0;
  std::int64_t size = 0;
};

// A member's sha256 (and its bytes when `keep`), read in chunks and never beyond the size the zip declares.
std::string read_member(zip_t* archive, const Entry& entry, const std::string& member, const std::string& name,
                        std::vector<std::uint8_t>* keep) {
  zip_stat_t st;
  zip_stat_init(&st);
  if (zip_stat_index(archive, entry.index, 0, &st) != 0) throw damaged(name);
  if ((st.valid & ZIP_STAT_ENCRYPTION_METHOD) && st.encryption_method != ZIP_EM_NONE) {
    throw package_error(name + ": a member cannot be read (File " + json::repr_string(member) +
                        " is encrypted, password required for extraction)");
  }
  // Python's zipfile reads stored, deflate, bzip2 and LZMA members; libzip would read others too (xz, zstd),
  // and before 1.8 it has no LZMA: such a member is refused here, as it cannot be read.
  if (st.valid & ZIP_STAT_COMP_METHOD) {
    std::int32_t method = st.comp_method;
    bool python_reads = method == ZIP_CM_STORE || method == ZIP_CM_DEFLATE || method == ZIP_CM_BZIP2 ||
                        method == ZIP_CM_LZMA;
    if (!python_reads || !zip_compression_method_supported(method, 0)) {
      throw package_error(name + ": a member cannot be read (member " + json::repr_string(member) +
                          ": compression method " + std::to_string(method) + " is not supported)");
    }
  }
  std::unique_ptr<zip_file_t, ZipFileCloser> file(zip_fopen_index(archive, entry.index, 0));
  if (!file) throw damaged(name);
  Sha256 digest;
  if (keep) keep->reserve(static_cast<std::size_t>(entry.size));
  std::vector<std::uint8_t> chunk(chunk_bytes);
  std::int64_t total = 0;
  for (;;) {
    // One byte past the declared size is asked for at the end: libzip checks the CRC at the end of the data,
    // and a member with more data than declared is refused.
    auto want = static_cast<zip_uint64_t>(std::min<std::int64_t>(chunk_bytes, entry.size - total + 1));
    zip_int64_t got = zip_fread(file.get(), chunk.data(), want);
    if (got < 0) throw damaged(name);
    if (got == 0) break;
    total += got;
    if (total > entry.size) {
      throw package_error(name + ": member " + json::repr_string(member) + " is larger than the zip declares");
    }
    digest.update(chunk.data(), static_cast<std::size_t>(got));
    if (keep) keep->insert(keep->end(), chunk.data(), chunk.data() + got);
  }
  return digest.hex();
}

// --- the manifest ----------------------------------------------------------------------------------------------

enum Kind : unsigned { integer = 1, number = 2, string = 4, object = 8, list = 16 };

bool of_kind(const Json& value, unsigned kinds) {
  if (value.is_boolean()) return false;
  return ((kinds & integer) && json::is_integer(value)) || ((kinds & number) && json::is_float(value)) ||
         ((kinds & string) && value.is_string()) || ((kinds & object) && value.is_object()) ||
         ((kinds & list) && value.is_array());
}

std::string expected(unsigned kinds) {
  std::vector<std::string> names;
  if (kinds & integer) names.emplace_back("an integer");
  if (kinds & number) names.emplace_back("a number");
  if (kinds & string) names.emplace_back("a string");
  if (kinds & object) names.emplace_back("an object");
  if (kinds & list) names.emplace_back("a list");
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) out += (i ? " or " : "") + names[i];
  return out;
}

// _get: d[key] of exactly `kinds` (a bool is no number); `fallback` when absent, if given.
const Json& get(const Json& d, const std::string& key, unsigned kinds, const std::string& where,
                const Json* fallback = nullptr) {
  auto found = d.find(key);
  if (found == d.end()) {
    if (!fallback) throw json::Invalid("required field " + where + json::repr_string(key) + " is missing");
    return *fallback;
  }
  if (!of_kind(*found, kinds)) {
    throw json::Invalid("field " + where + json::repr_string(key) + " must be " + expected(kinds) + ", got " +
                        json::type_name(*found) + " (" + json::repr(*found, 60) + ")");
  }
  return *found;
}

// _free_form: an object whose numbers must all be finite, walked as Python walks it (last pushed, first seen).
// Each item keeps its parent container and its own label (".key" or "[i]"), not its whole path: a path is spelled
// out only for the error, so deep nesting with long keys costs memory in proportion to the manifest, not to
// depth times width.
const Json& free_form(const Json& d, const std::string& key, const std::string& where = "") {
  static const Json empty = Json::object();
  const Json& value = get(d, key, object, where, &empty);
  struct Container {
    std::size_t parent;  // index into `containers`, or `none`
    std::string label;
  };
  struct Item {
    std::size_t parent;
    std::string label;
    const Json* json;
  };
  constexpr std::size_t none = static_cast<std::size_t>(-1);
  std::vector<Container> containers;
  std::vector<Item> stack{{none, where + key, &value}};
  while (!stack.empty()) {
    Item item = std::move(stack.back());
    stack.pop_back();
    if (item.json->is_number_float() && !std::isfinite(item.json->get<double>())) {
      std::vector<const std::string*> parts{&item.label};
      for (std::size_t at = item.parent; at != none; at = containers[at].parent) parts.push_back(&containers[at].label);
      std::string path;
      for (auto part = parts.rbegin(); part != parts.rend(); ++part) path += **part;
      throw json::Invalid("field " + json::repr_string(path) + " is " + json::repr_float(item.json->get<double>()) +
                          ", not a finite number");
    }
    if (item.json->is_object() || item.json->is_array()) {
      const std::size_t here = containers.size();
      containers.push_back({item.parent, std::move(item.label)});
      if (item.json->is_object()) {
        for (const auto& [k, v] : item.json->items()) stack.push_back({here, "." + k, &v});
      } else {
        for (std::size_t i = 0; i < item.json->size(); ++i) {
          stack.push_back({here, "[" + std::to_string(i) + "]", &(*item.json)[i]});
        }
      }
    }
  }
  return value;
}

// _only_keys.
void only_keys(const Json& d, std::vector<std::string> known, const std::string& where) {
  std::vector<std::string> unknown;
  for (const auto& [key, value] : d.items()) {
    if (std::find(known.begin(), known.end(), key) == known.end()) unknown.push_back(key);
  }
  if (unknown.empty()) return;
  std::sort(unknown.begin(), unknown.end());
  std::sort(known.begin(), known.end());
  throw json::Invalid((where.empty() ? std::string("the manifest") : where) + " has unknown fields " +
                      list_repr(unknown) + " (known: " + list_repr(known) + ")");
}

bool is_sha256(const std::string& text) {
  return text.size() == 64 && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// A member size from the manifest: saturated, so that one beyond 64 bits never equals a zip's size.
std::int64_t member_size(const Json& value) {
  if (json::is_big_integer(value)) return std::numeric_limits<std::int64_t>::max();
  if (value.is_number_unsigned() &&
      value.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    return std::numeric_limits<std::int64_t>::max();
  }
  return value.get<std::int64_t>();
}

std::vector<Variant> parse_variants(const Json& raw) {
  if (raw.empty()) throw json::Invalid("field 'model.variants' is empty: a package holds at least one variant");
  std::vector<Variant> variants;
  for (const auto& [precision, value] : raw.items()) {
    std::string where = "model.variants." + precision + ".";
    if (!known_precision(precision)) {
      throw json::Invalid("field 'model.variants' names an unknown precision " + json::repr(Json(precision), 40) +
                          " (known: fp32, fp16, int8, int8-cpu)");
    }
    const Json& entry = get(raw, precision, object, "model.variants.");
    only_keys(entry, {"file", "accuracy"}, "field " + json::repr_string(where.substr(0, where.size() - 1)));
    Variant variant;
    variant.precision = precision;
    variant.file = get(entry, "file", string, where).get<std::string>();
    variant.accuracy_json = json::dump(free_form(entry, "accuracy", where));
    variants.push_back(std::move(variant));
  }
  std::vector<std::string> files;
  for (const auto& v : variants) files.push_back(v.file);
  if (std::set<std::string>(files.begin(), files.end()).size() != files.size()) {
    throw json::Invalid("variants share a member (" + list_repr(files) + "); each variant has its own");
  }
  return variants;
}

// Manifest._parse, fields checked in its order.
Manifest parse_fields(const Json& d, int version) {
  only_keys(d, {"format", "format_version", "model", "preprocess", "threshold", "threshold_source", "architecture",
                "provenance", "files", "created"},
            "");
  const Json& model = get(d, "model", object, "");
  only_keys(model, {version == 1 ? "file" : "variants", "format", "input", "output", "output_meaning"},
            "field 'model'");
  if (get(model, "format", string, "model.") != "onnx") {
    throw json::Invalid("model format " + json::repr(model.at("format"), 60) + " is not supported (expected onnx)");
  }
  static const Json half(0.5);
  const Json& threshold = get(d, "threshold", integer | number, "", &half);
  double t = json::to_double(threshold);
  if (json::is_big_integer(threshold) || !(t >= 0.0 && t <= 1.0 && std::isfinite(t))) {
    throw json::Invalid("field 'threshold' (" + json::repr(threshold) + ") is not a probability in [0, 1]");
  }
  Manifest m;
  m.format_version = version;
  const Json& files = get(d, "files", object, "");
  for (const auto& [member, meta] : files.items()) {
    std::string where = "files[" + json::repr_string(member) + "].";
    get(files, member, object, "files.");
    only_keys(meta, {"sha256", "size"}, "field files[" + json::repr_string(member) + "]");
    std::string sha = get(meta, "sha256", string, where).get<std::string>();
    if (!is_sha256(sha)) throw json::Invalid("field " + where + "'sha256' is not 64 lowercase hexadecimal digits");
    const Json& size = get(meta, "size", integer, where);
    bool negative = json::is_big_integer(size) ? json::big_integer_text(size)[0] == '-'
                                               : size.is_number_integer() && !size.is_number_unsigned() &&
                                                     size.get<std::int64_t>() < 0;
    if (negative) throw json::Invalid("field " + where + "'size' is negative (" + json::repr(size) + ")");
    m.files[member] = MemberEntry{sha, member_size(size)};
  }
  if (version == 1) {
    m.variants = {Variant{"fp32", get(model, "file", string, "model.").get<std::string>(), "{}"}};
  } else {
    m.variants = parse_variants(get(model, "variants", object, "model."));
  }
  for (const auto& variant : m.variants) {
    if (!files.contains(variant.file)) {
      throw json::Invalid("variant " + json::repr_string(variant.precision) + ": member " +
                          json::repr_string(variant.file) + " has no checksum in 'files'");
    }
  }
  m.preprocess = preprocess_spec_from_json(get(d, "preprocess", object, ""));
  m.threshold = t;
  static const Json default_source("default"), no_time(""), image("image"), logit("logit");
  m.threshold_source = get(d, "threshold_source", string, "", &default_source).get<std::string>();
  m.architecture_json = json::dump(free_form(d, "architecture"));
  m.provenance_json = json::dump(free_form(d, "provenance"));
  m.input_name = get(model, "input", string, "model.", &image).get<std::string>();
  m.output_name = get(model, "output", string, "model.", &logit).get<std::string>();
  m.created = get(d, "created", string, "", &no_time).get<std::string>();
  return m;
}

// Manifest.from_dict.
Manifest manifest_from_json(const Json& d, const std::string& source) {
  if (!d.is_object()) throw package_error(source + ": is not a JSON object");
  auto format = d.find("format");
  if (format == d.end() || *format != format_name) {
    std::string shown = format == d.end() ? "None" : json::repr(*format, 60);
    throw package_error(source + ": not a dgs model manifest (format is " + shown + ")");
  }
  auto version = d.find("format_version");
  if (version == d.end() || !json::is_integer(*version)) {
    std::string shown = version == d.end() ? "None" : json::repr(*version, 60);
    throw package_error(source + ": format_version missing or not an integer (" + shown + ")");
  }
  bool big = json::is_big_integer(*version);
  bool negative = big ? json::big_integer_text(*version)[0] == '-'
                      : !version->is_number_unsigned() && version->get<std::int64_t>() < 0;
  bool newer = !negative && (big || version->get<std::uint64_t>() > static_cast<std::uint64_t>(package_format_version));
  if (newer) {
    throw package_error(source + ": format version " + json::repr(*version) + " is newer than this SDK reads (" +
                        std::to_string(package_format_version) + "); upgrade dgs");
  }
  if (negative || version->get<std::int64_t>() < 1) {
    throw package_error(source + ": format version " + json::repr(*version) + " is not valid");
  }
  try {
    return parse_fields(d, version->get<int>());
  } catch (const json::Invalid& e) {
    throw package_error(source + ": " + e.what());
  }
}

struct Opened {
  Zip archive;
  Manifest manifest;
  std::map<std::string, Entry> members;  // all but the manifest
  std::vector<std::string> order;        // the manifest's "files", in its order
};

// _read_manifest: the manifest of an open package, and its other members, their sizes checked against it.
Opened read_opened_manifest(const std::string& name) {
  Opened opened{open_zip(name), {}, {}, {}};
  zip_t* archive = opened.archive.get();
  zip_int64_t count = zip_get_num_entries(archive, 0);
  if (count < 0) throw damaged(name);
  std::map<std::string, Entry> by_name;
  for (zip_int64_t i = 0; i < count; ++i) {
    auto index = static_cast<zip_uint64_t>(i);
    // Names as Python's zipfile reads them: UTF-8 when flagged, else CP437. An Info-ZIP Unicode Path field,
    // which libzip would prefer to the name and Python ignores, makes the readers disagree: refused.
    if (zip_file_extra_fields_count_by_id(archive, index, 0x7075, ZIP_FL_CENTRAL) != 0) throw damaged(name);
    const char* raw = zip_get_name(archive, index, ZIP_FL_ENC_STRICT);
    zip_stat_t st;
    zip_stat_init(&st);
    if (!raw || zip_stat_index(archive, index, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE)) throw damaged(name);
    std::string member = raw;
    if (by_name.count(member)) {
      throw package_error(name + ": member " + json::repr_string(member) + " appears twice in the zip");
    }
    by_name[member] = Entry{index, st.size > static_cast<zip_uint64_t>(std::numeric_limits<std::int64_t>::max())
                                        ? std::numeric_limits<std::int64_t>::max()
                                        : static_cast<std::int64_t>(st.size)};
  }
  auto manifest_entry = by_name.find(manifest_name);
  if (manifest_entry == by_name.end()) {
    throw package_error(name + ": not a dgs model package (no " + manifest_name + " inside)");
  }
  Entry manifest_info = manifest_entry->second;
  by_name.erase(manifest_entry);
  if (manifest_info.size > limits::max_manifest_bytes) {
    throw package_error(name + ": " + manifest_name + " declares " + json::group_digits(manifest_info.size) +
                        " bytes; the limit is " + json::group_digits(limits::max_manifest_bytes));
  }
  std::vector<std::uint8_t> raw;
  read_member(archive, manifest_info, manifest_name, name, &raw);
  Json document;
  try {
    document = json::parse(std::string(raw.begin(), raw.end()));
  } catch (const json::Invalid& e) {
    throw package_error(name + ": " + manifest_name + " is not valid JSON (" + e.what() + ")");
  }
  Manifest manifest = manifest_from_json(document, name + ": " + manifest_name);
  std::vector<std::string> unlisted, missing;
  for (const auto& [member, entry] : by_name) {
    if (!manifest.files.count(member)) unlisted.push_back(member);
  }
  if (!unlisted.empty()) {
    throw package_error(name + ": members " + list_repr(unlisted) + " are not listed (with a checksum) in the manifest");
  }
  for (const auto& [member, entry] : manifest.files) {
    if (!by_name.count(member)) missing.push_back(member);
  }
  if (!missing.empty()) {
    throw package_error(name + ": members " + list_repr(missing) + " listed in the manifest are missing");
  }
  // In the manifest's order, as Python checks them.
  std::int64_t total = 0;
  for (const auto& member : document.at("files").items()) {
    opened.order.push_back(member.key());
    const Entry& entry = by_name.at(member.key());
    std::int64_t listed = manifest.files.at(member.key()).size;
    if (entry.size != listed || entry.size > limits::max_member_bytes) {
      std::string shown = json::is_big_integer(member.value().at("size"))
                              ? json::big_integer_text(member.value().at("size"))
                              : group_unsigned(member.value().at("size").get<std::uint64_t>());
      throw package_error(name + ": member " + json::repr_string(member.key()) + " is " +
                          json::group_digits(entry.size) + " bytes in the zip and " + shown +
                          " in the manifest; they must agree and be at most " +
                          json::group_digits(limits::max_member_bytes));
    }
  }
  for (const auto& [member, entry] : by_name) total += entry.size;
  if (total > limits::max_package_content_bytes) {
    throw package_error(name + ": members of " + json::group_digits(total) + " bytes in all; the limit is " +
                        json::group_digits(limits::max_package_content_bytes));
  }
  opened.manifest = std::move(manifest);
  opened.members = std::move(by_name);
  return opened;
}

}  // namespace

std::string Manifest::default_precision() const {
  for (const auto& v : variants) {
    if (v.precision == "fp32") return "fp32";
  }
  return variants.empty() ? std::string("fp32") : variants.front().precision;
}

const Variant& Manifest::variant(const std::string& precision, const std::string& source) const {
  for (const auto& v : variants) {
    if (v.precision == precision) return v;
  }
  std::string where = source.empty() ? "" : source + ": ";
  std::string has;
  for (std::size_t i = 0; i < variants.size(); ++i) has += (i ? ", " : "") + variants[i].precision;
  std::string known = known_precision(precision) ? "" : "; precisions are fp32, fp16, int8, int8-cpu";
  throw package_error(where + "has no " + json::repr_string(precision) + " variant (it has " + has + known +
                      "); 'dgs export RUN --precision " + precision + "' writes one");
}

Manifest read_manifest(const std::string& path) { return read_opened_manifest(path).manifest; }

ModelPackage ModelPackage::load(const std::string& path, const std::string& precision) {
  Opened opened = read_opened_manifest(path);
  const Manifest& m = opened.manifest;
  std::string chosen = precision.empty() ? m.default_precision() : precision;
  const std::string kept = m.variant(chosen, path).file;
  ModelPackage package;
  package.path_ = path;
  package.precision_ = chosen;
  // Every member, in the manifest's order, is read and verified; only the kept variant's bytes stay.
  for (const auto& member : opened.order) {
    const MemberEntry& meta = m.files.at(member);
    bool keep = member == kept;
    std::string actual = read_member(opened.archive.get(), opened.members.at(member), member, path,
                                     keep ? &package.model_ : nullptr);
    if (actual != meta.sha256) {
      throw package_error(path + ": member " + json::repr_string(member) + " fails its checksum (manifest sha256 " +
                          meta.sha256 + ", content " + actual + "); the package is corrupted or was modified");
    }
  }
  package.manifest_ = std::move(opened.manifest);
  const Manifest& manifest = package.manifest_;
  package.graph_ = check_onnx_graph(package.model_, manifest.input_name, manifest.output_name,
                                    manifest.preprocess.size, path + ": " + kept);
  return package;
}

}  // namespace dgs
