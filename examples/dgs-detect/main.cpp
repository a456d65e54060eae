// dgs-detect: score every image in a folder with a .dgs model package and write one CSV row per file, as
// `dgs scan` does: the same files found in the same order, the same columns, quoting and number format, the same
// summary line and exit codes (0: every file scored, 1: some could not be, 2: bad arguments or model).
//
//     dgs-detect MODEL.dgs FOLDER [-o out.csv] [--batch N] [--backend NAME] [--precision P] [--threshold T]
//                [--hidden] [--no-recursive] [--follow-symlinks] [--overwrite]
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "dgs/detector.hpp"
#include "rows.hpp"

namespace {

using dgs_detect::csv_line;
using dgs_detect::python_repr;

const char* const usage =
    "Usage: dgs-detect MODEL.dgs FOLDER [options]\n"
    "\n"
    "  Score every image in FOLDER (or one file) with a .dgs model package; one CSV row per file (path,\n"
    "  probability, label, error). Exit code 0 when every file was scored, 1 when some could not be (their rows\n"
    "  say why), 2 for a usage problem or a model that cannot be used.\n"
    "\n"
    "Options:\n"
    "  -o, --out FILE      write rows to FILE (.csv) [default: standard output]\n"
    "  --overwrite         replace an existing --out file\n"
    "  --batch N           images per inference call [default: 32]\n"
    "  --backend NAME      a backend this library has (tensorrt when built with it) [default: auto]\n"
    "  --precision P       auto, fp32, fp16, int8 or int8-cpu [default: auto: the backend's fastest]\n"
    "  --threshold T       probability of 'fake' from which a file is labelled fake [default: the package's]\n"
    "  --hidden            also scan files and folders whose names start with a dot\n"
    "  --no-recursive      do not descend into sub-folders\n"
    "  --follow-symlinks   follow symbolic links that lead out of the folder [default: report them, unread]\n"
    "  -h, --help          show this message\n";

// A problem with the command line, the output or the model: "Error: ..." and exit code 2.
struct UsageError {
  std::string message;
};

// ---------------------------------------------------------------------------------------------------------------
// Paths, as Python's posixpath computes them (the rows must name files exactly as `dgs scan` does).

std::string join(const std::string& a, const std::string& b) {
  if (!b.empty() && b[0] == '/') return b;
  if (a.empty() || a.back() == '/') return a + b;
  return a + "/" + b;
}

std::string current_dir() {
  std::vector<char> buffer(4096);
  while (!getcwd(buffer.data(), buffer.size())) {
    if (errno != ERANGE) return "/";
    buffer.resize(buffer.size() * 2);
  }
  return buffer.data();
}

// posixpath.normpath.
std::string normpath(const std::string& path) {
  if (path.empty()) return ".";
  int slashes = path[0] == '/' ? 1 : 0;
  if (slashes && path.size() > 1 && path[1] == '/' && (path.size() == 2 || path[2] != '/')) slashes = 2;
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    start = end + 1;
    if (part.empty() || part == ".") continue;
    if (part != ".." || (!slashes && parts.empty()) || (!parts.empty() && parts.back() == "..")) {
      parts.push_back(part);
    } else if (!parts.empty()) {
      parts.pop_back();
    }
  }
  std::string out(static_cast<std::size_t>(slashes), '/');
  for (std::size_t i = 0; i < parts.size(); ++i) out += (i ? "/" : "") + parts[i];
  return out.empty() ? "." : out;
}

std::string abspath(const std::string& path) { return normpath(path[0] == '/' ? path : join(current_dir(), path)); }

std::pair<std::string, std::string> split(const std::string& path) {
  std::size_t slash = path.rfind('/');
  std::string head = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  std::string tail = slash == std::string::npos ? path : path.substr(slash + 1);
  if (!head.empty() && head.find_first_not_of('/') != std::string::npos) {
    while (!head.empty() && head.back() == '/') head.pop_back();
  }
  return {head, tail};
}

// Links resolved for one path at the most, as the kernel's own limit (a longer chain cannot be opened: ELOOP); past
// it the chain is treated as a loop. It also bounds the recursion below and its cost (each hop walks a path).
constexpr std::size_t max_symlink_hops = 40;

// posixpath._joinrealpath, not strict: links are resolved as far as they lead; a broken one ends where it points.
bool join_realpath(std::string& path, std::string rest, std::map<std::string, std::optional<std::string>>& seen) {
  if (!rest.empty() && rest[0] == '/') {
    rest = rest.substr(1);
    path = "/";
  }
  while (!rest.empty()) {
    std::size_t slash = rest.find('/');
    std::string name = rest.substr(0, slash);
    rest = slash == std::string::npos ? "" : rest.substr(slash + 1);
    if (name.empty() || name == ".") continue;
    if (name == "..") {
      if (!path.empty()) {
        auto [head, tail] = split(path);
        path = tail == ".." ? join(join(head, ".."), "..") : head;
      } else {
        path = "..";
      }
      continue;
    }
    std::string next = join(path, name);
    struct stat st;
    if (lstat(next.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) {
      path = next;
      continue;
    }
    auto known = seen.find(next);
    if (known != seen.end()) {
      if (known->second) {
        path = *known->second;
        continue;
      }
      path = join(next, rest);  // a loop of links
      return false;
    }
    if (seen.size() >= max_symlink_hops) {
      path = join(next, rest);
      return false;
    }
    seen[next] = std::nullopt;
    std::vector<char> target(4096);
    ssize_t length = readlink(next.c_str(), target.data(), target.size());
    if (length < 0) {
      path = next;
      continue;
    }
    if (!join_realpath(path, std::string(target.data(), static_cast<std::size_t>(length)), seen)) {
      path = join(path, rest);
      return false;
    }
    seen[next] = path;
  }
  return true;
}

std::string realpath_of(const std::string& path) {
  std::string out;
  std::map<std::string, std::optional<std::string>> seen;
  join_realpath(out, path, seen);
  return abspath(out);
}

bool inside(const std::string& path, const std::string& root) {
  std::string prefix = root;
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  return path == root || path.compare(0, prefix.size() + 1, prefix + "/") == 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Finding the files, as dgs_sdk.scan.discover does for one folder (or file) argument.

struct Target {
  std::string path;
  std::string error;  // why it produced no file to score; empty when it is scored
};

struct WalkOptions {
  bool recursive = true;
  bool follow_symlinks = false;
  bool hidden = false;
};

bool is_image_name(const std::string& name) {
  // os.path.splitext: the extension starts at the last dot, leading dots excluded.
  std::size_t first = name.find_first_not_of('.');
  if (first == std::string::npos) return false;
  std::size_t dot = name.rfind('.');
  if (dot == std::string::npos || dot < first) return false;
  std::string ext = name.substr(dot);
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  static const std::set<std::string> extensions{".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"};
  return extensions.count(ext) > 0;
}

// An error target when `path` (a link) leads out of `root` (a real path).
std::optional<Target> outside(const std::string& path, const std::string& root) {
  // A chain of links longer than the kernel follows cannot be opened: reported as the kernel reports it.
  struct stat st;
  if (stat(path.c_str(), &st) != 0 && errno == ELOOP) {
    return Target{path, path + ": symbolic link that cannot be resolved (" + std::strerror(ELOOP) + "); not followed"};
  }
  std::string target = realpath_of(path);
  if (inside(target, root)) return std::nullopt;
  return Target{path, path + ": symbolic link to " + target + ", outside the scanned folder " + root +
                          "; not followed (--follow-symlinks follows it)"};
}

// Image files under `top`, depth first in sorted order (dgs_sdk.scan._walk).
std::vector<Target> walk(const std::string& top, const WalkOptions& options) {
  std::vector<Target> found;
  const std::string root = realpath_of(top);
  std::set<std::pair<dev_t, ino_t>> seen;
  std::vector<std::string> stack{top};
  while (!stack.empty()) {
    std::string folder = stack.back();
    stack.pop_back();
    struct stat st;
    std::vector<std::string> names;
    DIR* dir = stat(folder.c_str(), &st) == 0 ? opendir(folder.c_str()) : nullptr;
    if (!dir) {
      found.push_back({folder, folder + ": folder cannot be read (" + std::strerror(errno) + ")"});
      continue;
    }
    int error = 0;
    for (;;) {
      errno = 0;
      dirent* entry = readdir(dir);
      if (!entry) {
        error = errno;  // 0 at the end of the folder; else the listing stopped part-way
        break;
      }
      std::string name = entry->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    closedir(dir);
    if (error != 0) {
      found.push_back({folder, folder + ": folder cannot be read (" + std::strerror(error) + ")"});
      continue;
    }
    if (!seen.insert({st.st_dev, st.st_ino}).second) continue;  // a folder reached again through a link
    std::sort(names.begin(), names.end());  // byte order: code point order for UTF-8, as Python sorts names
    std::vector<std::string> subfolders;
    for (const auto& name : names) {
      if (name[0] == '.' && !options.hidden) continue;
      std::string path = join(folder, name);
      struct stat target;
      bool is_dir = stat(path.c_str(), &target) == 0 && S_ISDIR(target.st_mode);  // follows links
      if (!is_dir && !is_image_name(name)) continue;
      struct stat link;
      bool is_link = lstat(path.c_str(), &link) == 0 && S_ISLNK(link.st_mode);
      std::optional<Target> out = !options.follow_symlinks && is_link ? outside(path, root) : std::nullopt;
      if (out) {
        found.push_back(*out);
      } else if (is_dir) {
        subfolders.push_back(path);
      } else {
        found.push_back({path, ""});
      }
    }
    if (options.recursive) stack.insert(stack.end(), subfolders.rbegin(), subfolders.rend());
  }
  return found;
}

std::vector<Target> discover(const std::string& path, const WalkOptions& options) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return {{path, path + ": no such file or folder"}};
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return walk(path, options);
  return {{path, ""}};  // a file named on the command line is scored whatever its name; reading reports problems
}

struct Summary {
  std::size_t real = 0, fake = 0, errors = 0;
  std::size_t total() const { return real + fake + errors; }
};

// Where rows go: standard output, or a new file that takes the place of `out` once its first rows are written.
class Output {
 public:
  Output(std::string out, bool overwrite) : out_(std::move(out)) {
    if (out_.empty()) return;
    std::string name = split(out_).second;
    std::size_t dot = name.rfind('.');
    std::string ext = dot == std::string::npos || name.find_first_not_of('.') > dot ? "" : name.substr(dot);
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (ext != ".csv") throw UsageError{out_ + ": output must end in .csv"};
    std::string parent = split(out_).first.empty() ? "." : split(out_).first;
    struct stat st;
    if (stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      throw UsageError{out_ + ": cannot write results, folder " + parent + " does not exist"};
    }
    if (lstat(out_.c_str(), &st) == 0) {
      if (stat(out_.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
        throw UsageError{out_ + ": exists and is not a regular file; give another --out"};
      }
      if (!overwrite) throw UsageError{out_ + ": already exists; --overwrite replaces it"};
    }
  }

  ~Output() {
    if (file_) std::fclose(file_);
    if (!temporary_.empty()) std::remove(temporary_.c_str());
  }

  void write(const std::string& rows) {
    if (out_.empty()) {
      if (!started_) std::fputs(header().c_str(), stdout);
      started_ = true;
      if (std::fwrite(rows.data(), 1, rows.size(), stdout) != rows.size() || std::fflush(stdout) != 0) {
        throw UsageError{std::string("standard output: cannot write results (") + std::strerror(errno) + ")"};
      }
      return;
    }
    if (!file_) {
      // A new file of an unpredictable name (mkstemp: O_EXCL), so a link planted beside `out` is never written
      // through.
      std::string name = out_ + ".XXXXXX";
      int fd = mkostemp(name.data(), O_CLOEXEC);
      if (fd >= 0) temporary_ = name;
      if (fd >= 0 && fchmod(fd, 0644) != 0) {
        close(fd);
        fd = -1;
      }
      file_ = fd >= 0 ? fdopen(fd, "wb") : nullptr;
      if (!file_) fail();
      put(header() + rows);
      if (std::rename(temporary_.c_str(), out_.c_str()) != 0) fail();
      temporary_.clear();
      return;
    }
    put(rows);
  }

  // Every row is written: a scan that found nothing still leaves its header.
  void finish() {
    if (!started_ && !file_) write("");
    if (file_ && std::fclose(file_) != 0) {
      file_ = nullptr;
      fail();
    }
    file_ = nullptr;
  }

 private:
  static std::string header() { return csv_line({"path", "probability", "label", "error"}); }

  void put(const std::string& data) {
    if (std::fwrite(data.data(), 1, data.size(), file_) != data.size() || std::fflush(file_) != 0) fail();
  }

  [[noreturn]] void fail() { throw UsageError{out_ + ": cannot write results (" + std::strerror(errno) + ")"}; }

  std::string out_;
  std::string temporary_;
  std::FILE* file_ = nullptr;
  bool started_ = false;
};

// ---------------------------------------------------------------------------------------------------------------

struct Arguments {
  std::string model, folder, out;
  bool overwrite = false;
  WalkOptions walk;
  dgs::DetectorOptions detector;
};

int parse_int(const std::string& option, const std::string& text) {
  int value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value < 1) {
    throw UsageError{"Invalid value for '" + option + "': '" + text + "' is not an integer of at least 1"};
  }
  return value;
}

double parse_probability(const std::string& option, const std::string& text) {
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end || !(value >= 0.0 && value <= 1.0)) {
    throw UsageError{"Invalid value for '" + option + "': '" + text + "' is not a probability in [0, 1]"};
  }
  return value;
}

std::optional<Arguments> parse(int argc, char** argv) {
  Arguments a;
  a.detector.threshold = -1;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i], value;
    bool has_value = false;
    if (arg.rfind("--", 0) == 0 && arg.find('=') != std::string::npos) {
      value = arg.substr(arg.find('=') + 1);
      arg = arg.substr(0, arg.find('='));
      has_value = true;
    }
    auto take = [&]() -> std::string {
      if (has_value) return value;
      if (i + 1 >= argc) throw UsageError{"Option '" + arg + "' requires an argument."};
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << usage;
      return std::nullopt;
    } else if (arg == "-o" || arg == "--out") {
      a.out = take();
    } else if (arg == "--batch" || arg == "--batch-size") {
      a.detector.batch_size = parse_int(arg, take());
    } else if (arg == "--backend") {
      a.detector.backend = take();
      if (a.detector.backend == "auto") a.detector.backend.clear();
    } else if (arg == "--precision") {
      a.detector.precision = take();
    } else if (arg == "--threshold") {
      a.detector.threshold = parse_probability(arg, take());
    } else if (arg == "--overwrite" || arg == "--hidden" || arg == "--no-recursive" || arg == "--follow-symlinks") {
      if (has_value) throw UsageError{"Option '" + arg + "' does not take a value."};
      if (arg == "--overwrite") a.overwrite = true;
      if (arg == "--hidden") a.walk.hidden = true;
      if (arg == "--no-recursive") a.walk.recursive = false;
      if (arg == "--follow-symlinks") a.walk.follow_symlinks = true;
    } else if (arg.size() > 1 && arg[0] == '-' && arg != "--") {
      throw UsageError{"No such option: " + arg};
    } else {
      if (arg == "--") {
        for (++i; i < argc; ++i) positional.push_back(argv[i]);
        break;
      }
      positional.push_back(arg);
    }
  }
  if (positional.size() != 2) {
    throw UsageError{positional.size() < 2 ? "Missing argument: MODEL.dgs FOLDER (see --help)"
                                           : "Got unexpected extra argument (" + positional[2] + ")"};
  }
  a.model = positional[0];
  a.folder = positional[1];
  return a;
}

int run(const Arguments& a) {
  Output output(a.out, a.overwrite);  // checked before the model is loaded
  std::optional<dgs::Detector> detector;
  try {
    detector.emplace(a.model, a.detector);
  } catch (const dgs::Error& e) {
    throw UsageError{e.what()};
  }
  std::string scored_with = detector->backend_name() + ", " + detector->package().precision();
  std::vector<Target> targets = discover(a.folder, a.walk);
  // Files found in a folder are read only where they lead inside it when opened (unless links may lead out), so a
  // link swapped in after the listing is not followed; a file named on the command line is read where it leads.
  std::string confine;
  struct stat folder;
  if (!a.walk.follow_symlinks && stat(a.folder.c_str(), &folder) == 0 && S_ISDIR(folder.st_mode)) {
    confine = realpath_of(a.folder);
  }

  auto started = std::chrono::steady_clock::now();
  Summary summary;
  const std::size_t batch = static_cast<std::size_t>(detector->batch_size());
  std::size_t next = 0;
  while (next < targets.size()) {
    // The next targets holding one batch of files to score, with the error targets among them in their place.
    std::size_t end = next;
    std::vector<std::string> paths;
    while (end < targets.size() && paths.size() < batch) {
      if (targets[end].error.empty()) paths.push_back(targets[end].path);
      ++end;
    }
    std::vector<dgs::Result> results;
    try {
      results = detector->detect_files(paths, confine);
    } catch (const dgs::Error& e) {  // the rows of earlier batches are written already
      throw UsageError{e.what()};
    }
    std::string rows;
    std::size_t scored = 0;
    for (std::size_t i = next; i < end; ++i) {
      std::string error = targets[i].error;
      std::string probability, label;
      if (error.empty()) {
        const dgs::Result& r = results[scored++];
        if (r.status != dgs::Status::ok) {
          error = r.error;
        } else {
          probability = python_repr(r.probability);
          label = r.fake ? "fake" : "real";
        }
      }
      if (!error.empty()) {
        ++summary.errors;
      } else if (label == "fake") {
        ++summary.fake;
      } else {
        ++summary.real;
      }
      rows += csv_line({targets[i].path, probability, label, error});
    }
    output.write(rows);
    next = end;
  }
  output.finish();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  if (summary.total() == 0) std::cerr << "no image files found in " << a.folder << "\n";
  std::size_t scored = summary.real + summary.fake;
  char line[512];
  std::snprintf(line, sizeof line, "%zu files: %zu real, %zu fake, %zu errors in %.1f s (%.1f images/s) with %s",
                summary.total(), summary.real, summary.fake, summary.errors, seconds,
                seconds > 0 ? static_cast<double>(scored) / seconds : 0.0, scored_with.c_str());
  std::cerr << line << "\n";
  if (!a.out.empty()) std::cerr << "results written to " << a.out << "\n";
  return summary.errors ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::optional<Arguments> arguments = parse(argc, argv);
    return arguments ? run(*arguments) : 0;
  } catch (const UsageError& e) {
    std::cerr << "Error: " << e.message << "\n";
  } catch (const std::exception& e) {
    std::cerr << "Error: " << e.what() << "\n";
  }
  return 2;
}
