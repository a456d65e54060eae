// The engine cache of dgs_sdk/engine_cache.py, file for file: the same key recipe, names, sidecars, atomic
// writes and locks, so that a Python process and a C++ process share engines and wait for each other's builds.
#include "dgs/engine_cache.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dgs/error.hpp"
#include "sha256.hpp"

namespace fs = std::filesystem;

namespace dgs {

namespace {

constexpr const char* engines_dir = "engines";
constexpr const char* locks_dir = "locks";
constexpr std::int64_t max_sidecar_bytes = 1 << 20;  // as _MAX_SIDECAR_BYTES

std::string errno_text(int error) { return std::strerror(error); }

std::string writable_hint() { return "; set DGS_CACHE_DIR to a writable folder"; }

// ---- canonical JSON ---------------------------------------------------------------------------------------

// The next code point of UTF-8 `text` from `i` (advanced past it); Error(invalid_argument) on malformed UTF-8.
char32_t next_code_point(const std::string& text, std::size_t& i) {
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char lead = byte(i);
  int extra = lead < 0x80 ? 0 : (lead >> 5) == 0x6 ? 1 : (lead >> 4) == 0xE ? 2 : (lead >> 3) == 0x1E ? 3 : -1;
  if (extra < 0 || i + static_cast<std::size_t>(extra) >= text.size()) {
    throw Error(Status::invalid_argument, "engine key: a string is not valid UTF-8");
  }
  char32_t cp = extra == 0 ? lead : extra == 1 ? (lead & 0x1F) : extra == 2 ? (lead & 0x0F) : (lead & 0x07);
  for (int k = 1; k <= extra; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) throw Error(Status::invalid_argument, "engine key: a string is not valid UTF-8");
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  static constexpr char32_t smallest[] = {0, 0x80, 0x800, 0x10000};
  if (cp < smallest[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    throw Error(Status::invalid_argument, "engine key: a string is not valid UTF-8");
  }
  i += extra + 1;
  return cp;
}

void append_u_escape(std::string& out, unsigned value) {
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "\\u%04x", value & 0xFFFFu);
  out += buffer;
}

// A JSON string as Python's json.dumps(ensure_ascii=True) writes it: the short escapes it has (\" \\ \b \f
// \n \r \t), every other character outside ' '..'~' as \uxxxx (lowercase, a surrogate pair above U+FFFF).
void append_json_string(std::string& out, const std::string& text) {
  out += '"';
  for (std::size_t i = 0; i < text.size();) {
    char32_t cp = next_code_point(text, i);
    switch (cp) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      default: break;
    }
    if (cp >= 0x20 && cp <= 0x7E) {
      out += static_cast<char>(cp);
    } else if (cp < 0x10000) {
      append_u_escape(out, static_cast<unsigned>(cp));
    } else {
      char32_t v = cp - 0x10000;
      append_u_escape(out, 0xD800 + static_cast<unsigned>(v >> 10));
      append_u_escape(out, 0xDC00 + static_cast<unsigned>(v & 0x3FF));
    }
  }
  out += '"';
}

void append_canonical(std::string& out, const nlohmann::json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::object: {
      // nlohmann's objects are std::maps: keys in byte order, which for UTF-8 is code point order.
      out += '{';
      bool first = true;
      for (const auto& [name, member] : value.items()) {
        if (!first) out += ',';
        first = false;
        append_json_string(out, name);
        out += ':';
        append_canonical(out, member);
      }
      out += '}';
      return;
    }
    case nlohmann::json::value_t::array: {
      out += '[';
      for (std::size_t i = 0; i < value.size(); ++i) {
        if (i) out += ',';
        append_canonical(out, value[i]);
      }
      out += ']';
      return;
    }
    case nlohmann::json::value_t::string: append_json_string(out, value.get_ref<const std::string&>()); return;
    case nlohmann::json::value_t::number_float: {
      double number = value.get<double>();
      if (!std::isfinite(number)) throw Error(Status::invalid_argument, "engine key: a number is not finite");
      out += value.dump();  // shortest round trip, as Python's repr for the values a key holds
      return;
    }
    default: out += value.dump(); return;  // integers in decimal, true, false, null
  }
}

std::string canonical(const nlohmann::json& value) {
  std::string out;
  append_canonical(out, value);
  return out;
}

// The key fields, in the order EngineKey.fields() lists them (the order the sidecar shows them in).
nlohmann::ordered_json key_fields(const EngineKey& key) {
  nlohmann::ordered_json fields;
  fields["cache_format"] = engine_cache_format;
  fields["tensorrt"] = key.tensorrt;
  fields["gpu"] = key.gpu;
  fields["compute_capability"] = key.compute_capability;
  fields["cuda"] = key.cuda;
  fields["onnx_sha256"] = key.onnx_sha256;
  fields["precision"] = key.precision;
  fields["profile"] = key.profile.str();
  fields["workspace_mib"] = key.workspace_mib;
  return fields;
}

std::string digest_of(const std::string& canonical_text) {
  return sha256_hex(canonical_text.data(), canonical_text.size());
}

// Any character of a version outside [A-Za-z0-9._-] becomes '_': one per character (code point), as Python's
// regex replaces characters, not UTF-8 bytes.
std::string file_safe_version(const std::string& version) {
  std::string out;
  for (std::size_t i = 0; i < version.size();) {
    char32_t cp = next_code_point(version, i);
    bool keep = (cp >= 'A' && cp <= 'Z') || (cp >= 'a' && cp <= 'z') || (cp >= '0' && cp <= '9') || cp == '.' ||
                cp == '_' || cp == '-';
    out += keep ? static_cast<char>(cp) : '_';
  }
  return out;
}

std::string without_dots(std::string text) {
  text.erase(std::remove(text.begin(), text.end(), '.'), text.end());
  return text;
}

bool is_key(const std::string& text) {
  return text.size() == 64 &&
         std::all_of(text.begin(), text.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// ---- files ------------------------------------------------------------------------------------------------

bool process_alive(long pid) {
  if (::kill(static_cast<pid_t>(pid), 0) == 0) return true;
  return errno == EPERM;  // someone else's process
}

// Removes "<name>.<pid>-<token>.tmp" files of writers that no longer run (as AtomicFile._remove_stale).
void remove_stale(const fs::path& folder, const std::string& name) {
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    std::string entry = it->path().filename().string();
    if (entry.size() <= name.size() + 5 || entry.compare(0, name.size() + 1, name + ".") != 0 ||
        entry.compare(entry.size() - 4, 4, ".tmp") != 0) {
      continue;
    }
    std::string middle = entry.substr(name.size() + 1, entry.size() - name.size() - 5);
    auto dash = middle.find('-');
    if (dash == std::string::npos || dash == 0) continue;
    std::string pid = middle.substr(0, dash);
    if (!std::all_of(pid.begin(), pid.end(), [](char c) { return c >= '0' && c <= '9'; }) || pid.size() > 9) continue;
    long number = std::stol(pid);
    if (number != static_cast<long>(::getpid()) && !process_alive(number)) ::unlink(it->path().c_str());
  }
}

std::string random_token() {
  std::random_device device;
  char buffer[9];
  std::snprintf(buffer, sizeof buffer, "%08x", static_cast<unsigned>(device()));
  return buffer;
}

// Writes `data` to `path` as dgs_sdk.files.AtomicFile does: a temporary file beside it, renamed into place;
// on any failure the temporary file is removed and `path` is as it was. Throws std::system_error.
void write_atomically(const fs::path& path, const char* data, std::size_t size, bool sync) {
  remove_stale(path.parent_path(), path.filename().string());
  fs::path tmp = path;
  tmp += "." + std::to_string(::getpid()) + "-" + random_token() + ".tmp";
  int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) throw std::system_error(errno, std::generic_category());
  int error = 0;
  for (std::size_t done = 0; done < size && !error;) {
    ssize_t n = ::write(fd, data + done, size - done);
    if (n < 0 && errno != EINTR) error = errno;
    if (n > 0) done += static_cast<std::size_t>(n);
  }
  if (!error && sync && ::fsync(fd) != 0) error = errno;
  if (::close(fd) != 0 && !error) error = errno;
  if (!error && ::rename(tmp.c_str(), path.c_str()) != 0) error = errno;
  if (error) {
    ::unlink(tmp.c_str());
    throw std::system_error(error, std::generic_category());
  }
}

// The bytes of a regular file of at most `limit` bytes; none when it is missing, not regular, larger, or
// unreadable (a cache that cannot be read is a cache miss, as in Python).
std::optional<std::vector<char>> read_file(const fs::path& path, std::int64_t limit) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return std::nullopt;
  struct stat st {};
  std::optional<std::vector<char>> out;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= limit) {
    std::vector<char> data(static_cast<std::size_t>(st.st_size));
    std::size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::read(fd, data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
    if (done == data.size()) out = std::move(data);
  }
  ::close(fd);
  return out;
}

std::string utc_now_iso() {
  std::time_t now = std::time(nullptr);
  std::tm utc {};
  ::gmtime_r(&now, &utc);
  char buffer[40];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%S+00:00", &utc);  // isoformat(timespec="seconds")
  return buffer;
}

// What a sidecar says, read as EngineCache._read_sidecar reads it.
struct Sidecar {
  std::string key;
  nlohmann::json fields;
  std::string built;
  std::int64_t plan_bytes = 0;
  std::string plan_sha256;
};

std::optional<Sidecar> read_sidecar(const fs::path& path) {
  auto text = read_file(path, max_sidecar_bytes);
  if (!text) return std::nullopt;
  nlohmann::json d = nlohmann::json::parse(text->begin(), text->end(), nullptr, false);
  if (d.is_discarded() || !d.is_object()) return std::nullopt;
  auto key = d.find("key");
  auto fields = d.find("fields");
  auto bytes = d.find("plan_bytes");
  auto sha = d.find("plan_sha256");
  if (key == d.end() || !key->is_string() || fields == d.end() || !fields->is_object() || bytes == d.end() ||
      !bytes->is_number_integer() || sha == d.end() || !sha->is_string()) {
    return std::nullopt;
  }
  Sidecar out{key->get<std::string>(), *fields, "", bytes->get<std::int64_t>(), sha->get<std::string>()};
  if (auto built = d.find("built"); built != d.end() && built->is_string()) out.built = built->get<std::string>();
  if (!is_key(out.key)) return std::nullopt;
  return out;
}

// The key a sidecar's fields describe, when they are the fields of a key this recipe makes.
std::optional<EngineKey> key_of_fields(const nlohmann::json& f) {
  auto text = [&](const char* name) -> std::optional<std::string> {
    auto it = f.find(name);
    if (it == f.end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
  };
  auto cache_format = f.find("cache_format");
  auto workspace = f.find("workspace_mib");
  if (cache_format == f.end() || !cache_format->is_number_integer() || *cache_format != engine_cache_format ||
      workspace == f.end() || !workspace->is_number_integer() || f.size() != 9) {
    return std::nullopt;
  }
  EngineKey key;
  auto tensorrt = text("tensorrt"), gpu = text("gpu"), cc = text("compute_capability"), cuda = text("cuda"),
       onnx = text("onnx_sha256"), precision = text("precision"), profile = text("profile");
  if (!tensorrt || !gpu || !cc || !cuda || !onnx || !precision || !profile) return std::nullopt;
  key.tensorrt = *tensorrt;
  key.gpu = *gpu;
  key.compute_capability = *cc;
  key.cuda = *cuda;
  key.onnx_sha256 = *onnx;
  key.precision = *precision;
  key.workspace_mib = workspace->get<int>();
  try {
    key.profile = BatchProfile::parse(*profile);
  } catch (const Error&) {
    return std::nullopt;
  }
  return key;
}

std::string strip(const std::string& text) {
  auto first = text.find_first_not_of(" \t\n\r\f\v");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\n\r\f\v") - first + 1);
}

// Path(text) as pathlib writes it: repeated and trailing separators and "." components dropped.
std::string normalise_path(const std::string& text) {
  bool absolute = !text.empty() && text[0] == '/';
  bool two_slashes = text.size() >= 2 && text[0] == '/' && text[1] == '/' && (text.size() == 2 || text[2] != '/');
  std::string out, part;
  std::istringstream parts(text);
  while (std::getline(parts, part, '/')) {
    if (part.empty() || part == ".") continue;
    if (!out.empty()) out += '/';
    out += part;
  }
  std::string prefix = two_slashes ? "//" : absolute ? "/" : "";
  if (out.empty()) return prefix.empty() ? "." : prefix;
  return prefix + out;
}

std::string home_folder() {
  if (const char* home = std::getenv("HOME")) return home;
  if (const passwd* entry = ::getpwuid(::getuid()); entry && entry->pw_dir) return entry->pw_dir;
  throw Error(Status::io, "the home folder cannot be determined (HOME is not set); set DGS_CACHE_DIR");
}

// "~" and "~user" at the start of a path, as Path.expanduser.
std::string expand_user(const std::string& path) {
  if (path.empty() || path[0] != '~') return path;
  auto slash = path.find('/');
  std::string user = path.substr(1, slash == std::string::npos ? std::string::npos : slash - 1);
  std::string rest = slash == std::string::npos ? "" : path.substr(slash);
  if (user.empty()) return home_folder() + rest;
  const passwd* entry = ::getpwnam(user.c_str());
  if (!entry || !entry->pw_dir) {
    throw Error(Status::io, "DGS_CACHE_DIR=" + path + ": the home folder of '" + user + "' cannot be determined");
  }
  return entry->pw_dir + rest;
}

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

void say(const std::string& message) { std::cerr << "dgs: " << message << '\n'; }

}  // namespace

// ---- key --------------------------------------------------------------------------------------------------

std::string BatchProfile::str() const {
  return std::to_string(min) + ":" + std::to_string(opt) + ":" + std::to_string(max);
}

BatchProfile BatchProfile::parse(const std::string& text) {
  std::vector<int> numbers;
  std::string part;
  bool ok = true;
  std::size_t count = 0;
  for (std::string rest = strip(text);;) {
    auto colon = rest.find(':');
    part = strip(rest.substr(0, colon));
    ++count;
    if (part.empty() || part.size() > 9 || !std::all_of(part.begin(), part.end(), [](char c) {
          return c >= '0' && c <= '9';
        })) {
      ok = false;
    } else {
      numbers.push_back(std::stoi(part));
    }
    if (colon == std::string::npos) break;
    rest = rest.substr(colon + 1);
  }
  if (!ok || (count != 1 && count != 3)) {
    throw Error(Status::invalid_argument, "batch profile '" + text +
                                              "' is not understood (expected MIN:OPT:MAX such as 1:8:32, or one number)");
  }
  BatchProfile profile = count == 3 ? BatchProfile{numbers[0], numbers[1], numbers[2]}
                                    : BatchProfile{numbers[0], numbers[0], numbers[0]};
  for (auto [name, value] : {std::pair{"min", profile.min}, {"opt", profile.opt}, {"max", profile.max}}) {
    if (value < 1) {
      throw Error(Status::invalid_argument, std::string("batch profile: ") + name +
                                                " must be a whole number of at least 1, got " + std::to_string(value));
    }
  }
  if (!(profile.min <= profile.opt && profile.opt <= profile.max)) {
    throw Error(Status::invalid_argument, "batch profile " + profile.str() + ": needs min <= opt <= max");
  }
  return profile;
}

std::string EngineKey::canonical_json() const { return canonical(nlohmann::json(key_fields(*this))); }

std::string EngineKey::digest() const { return digest_of(canonical_json()); }

std::string EngineKey::file_stem() const {
  return precision + "-b" + std::to_string(profile.min) + "-" + std::to_string(profile.opt) + "-" +
         std::to_string(profile.max) + "-trt" + file_safe_version(tensorrt) + "-sm" + without_dots(compute_capability) +
         "-" + digest();
}

std::string EngineKey::timing_cache_stem() const {
  return "timing-" + file_safe_version(tensorrt) + "-sm" + without_dots(compute_capability);
}

bool EngineKey::same_target(const EngineKey& other) const {
  return tensorrt == other.tensorrt && gpu == other.gpu && compute_capability == other.compute_capability &&
         cuda == other.cuda && onnx_sha256 == other.onnx_sha256 && precision == other.precision;
}

std::string canonical_json(const std::string& json_text) {
  nlohmann::json value = nlohmann::json::parse(json_text, nullptr, false);
  if (value.is_discarded()) throw Error(Status::invalid_argument, "engine key: the fields are not JSON");
  return canonical(value);
}

std::string cache_dir() {
  // Empty variables count as unset (as the XDG specification says); a relative XDG_CACHE_HOME is ignored.
  if (std::string dgs = env("DGS_CACHE_DIR"); !dgs.empty()) return normalise_path(expand_user(dgs));
  if (std::string xdg = env("XDG_CACHE_HOME"); !xdg.empty() && xdg[0] == '/') return normalise_path(xdg + "/dgs");
  return normalise_path(home_folder() + "/.cache/dgs");
}

// ---- cache ------------------------------------------------------------------------------------------------

EngineCache::EngineCache(std::string root) : root_(root.empty() ? cache_dir() : std::move(root)) {}

std::string EngineCache::folder() const { return (fs::path(root_) / engines_dir).string(); }

std::string EngineCache::plan_path(const EngineKey& key) const {
  return (fs::path(folder()) / (key.file_stem() + ".plan")).string();
}

std::string EngineCache::sidecar_path(const EngineKey& key) const {
  return (fs::path(folder()) / (key.file_stem() + ".json")).string();
}

std::string EngineCache::timing_cache_path(const EngineKey& key) const {
  return (fs::path(folder()) / (key.timing_cache_stem() + ".cache")).string();
}

std::string EngineCache::lock_path(const std::string& name) const {
  return (fs::path(folder()) / locks_dir / (name + ".lock")).string();
}

std::optional<std::vector<char>> EngineCache::load(const EngineKey& key) const {
  auto entry = read_sidecar(sidecar_path(key));
  if (!entry || entry->key != key.digest() || entry->plan_bytes < 0) return std::nullopt;
  struct stat st {};
  if (::stat(plan_path(key).c_str(), &st) != 0 || st.st_size != entry->plan_bytes) return std::nullopt;
  auto plan = read_file(plan_path(key), entry->plan_bytes);
  if (!plan || static_cast<std::int64_t>(plan->size()) != entry->plan_bytes ||
      sha256_hex(plan->data(), plan->size()) != entry->plan_sha256) {
    return std::nullopt;
  }
  return plan;
}

void EngineCache::store(const EngineKey& key, const std::vector<char>& plan, const std::string& package,
                        double build_seconds) const {
  std::error_code ec;
  fs::create_directories(folder(), ec);
  try {
    if (ec) throw std::system_error(ec);
    write_atomically(plan_path(key), plan.data(), plan.size(), true);
    nlohmann::ordered_json sidecar;
    sidecar["key"] = key.digest();
    sidecar["fields"] = key_fields(key);
    sidecar["package"] = package;
    sidecar["built"] = utc_now_iso();
    sidecar["build_seconds"] = std::round(build_seconds * 1000.0) / 1000.0;
    sidecar["plan_bytes"] = plan.size();
    sidecar["plan_sha256"] = sha256_hex(plan.data(), plan.size());
    // As json.dumps(sidecar, indent=2): two-space indent, ASCII only.
    std::string text = sidecar.dump(2, ' ', true);
    write_atomically(sidecar_path(key), text.data(), text.size(), false);
  } catch (const std::system_error& e) {
    throw Error(Status::io, folder() + ": the engine cannot be written (" + errno_text(e.code().value()) + ")" +
                                writable_hint());
  }
}

void EngineCache::remove(const EngineKey& key) const {
  ::unlink(sidecar_path(key).c_str());
  ::unlink(plan_path(key).c_str());
}

std::optional<EngineKey> EngineCache::find_for_target(const EngineKey& key) const {
  std::optional<EngineKey> best;
  std::string best_built;
  std::error_code ec;
  std::vector<fs::path> sidecars;
  for (fs::directory_iterator it(folder(), ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() == ".json") sidecars.push_back(it->path());
  }
  // Sorted by name, then the newest "built" wins and ties keep the first (Python: sorted(...) then a stable sort).
  std::sort(sidecars.begin(), sidecars.end());
  for (const auto& path : sidecars) {
    auto entry = read_sidecar(path);
    if (!entry) continue;
    fs::path plan = path;
    plan.replace_extension(".plan");
    if (!fs::exists(plan, ec)) continue;
    if (entry->key != digest_of(canonical(entry->fields))) continue;
    auto found = key_of_fields(entry->fields);
    if (!found || !key.same_target(*found)) continue;
    if (!best || entry->built > best_built) {
      best = found;
      best_built = entry->built;
    }
  }
  return best;
}

std::vector<char> EngineCache::read_timing_cache(const EngineKey& key) const {
  auto data = read_file(timing_cache_path(key), std::int64_t{1} << 40);
  return data ? std::move(*data) : std::vector<char>{};
}

void EngineCache::store_timing_cache(const EngineKey& key, const std::vector<char>& data) const {
  if (data.empty()) return;
  Lock lock(lock_path(key.timing_cache_stem()));
  try {
    write_atomically(timing_cache_path(key), data.data(), data.size(), false);
  } catch (const std::system_error& e) {
    say(timing_cache_path(key) + ": the timing cache was not saved (" + errno_text(e.code().value()) + ")");
  }
}

bool EngineCache::get_or_build(const EngineKey& key, const std::function<bool(const std::vector<char>&)>& load_plan,
                               const std::function<std::vector<char>()>& build, const std::string& package) const {
  // The common case, without waiting on a lock: files appear whole or not at all.
  std::optional<std::string> refused;  // the sha256 of a cached plan the runtime refused
  if (auto plan = load(key)) {
    if (load_plan(*plan)) return false;
    refused = sha256_hex(plan->data(), plan->size());
  }
  std::vector<char> plan;
  {
    Lock lock(lock_path(key.digest()));
    if (read_sidecar(sidecar_path(key))) {
      auto cached = load(key);
      bool already_tried = cached && refused && *refused == sha256_hex(cached->data(), cached->size());
      if (cached && !already_tried && load_plan(*cached)) return false;  // another process rebuilt it meanwhile
      say(plan_path(key) + ": cached engine " +
          (cached ? "cannot be deserialised by this TensorRT" : "does not match its sidecar") +
          "; removed, building it again");
      remove(key);
    }
    auto started = std::chrono::steady_clock::now();
    plan = build();
    store(key, plan, package, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  }
  if (!load_plan(plan)) {
    remove(key);
    throw Error(Status::inference,
                plan_path(key) + ": TensorRT cannot deserialise the engine it has just built; removed");
  }
  return true;
}

// ---- lock -------------------------------------------------------------------------------------------------

EngineCache::Lock::Lock(const std::string& path) {
  fs::path folder = fs::path(path).parent_path();
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (ec) {
    throw Error(Status::io, folder.string() + ": the engine cache folder cannot be made (" + ec.message() + ")" +
                                writable_hint());
  }
  bool told = false;
  for (;;) {
    // As filelock's UnixFileLock: the same file, opened without truncation and never unlinked, flock(LOCK_EX).
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0666);
    if (fd < 0) {
      throw Error(Status::io, path + ": the lock file cannot be opened (" + errno_text(errno) + ")" + writable_hint());
    }
    int rc = ::flock(fd, LOCK_EX | LOCK_NB);
    if (rc != 0 && (errno == EWOULDBLOCK || errno == EAGAIN || errno == EACCES)) {
      if (!told) say("waiting for another process to finish with " + path);
      told = true;
      do {
        rc = ::flock(fd, LOCK_EX);
      } while (rc != 0 && errno == EINTR);
    }
    if (rc != 0) {
      int error = errno;
      ::close(fd);
      throw Error(Status::io, path + ": the lock cannot be taken (" + errno_text(error) + ")");
    }
    // A lock on a file someone unlinked meanwhile guards no name: start again on the file now there.
    struct stat st {};
    if (::fstat(fd, &st) == 0 && st.st_nlink == 0) {
      ::close(fd);
      continue;
    }
    fd_ = fd;
    return;
  }
}

EngineCache::Lock::~Lock() {
  if (fd_ >= 0) {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
}

}  // namespace dgs
