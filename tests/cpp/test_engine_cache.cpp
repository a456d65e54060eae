// The engine cache: the key recipe against values dgs_sdk.engine_cache computes, plans stored and loaded,
// damaged entries refused, the build-once flow, and the lock between processes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "dgs/engine_cache.hpp"
#include "dgs/error.hpp"

namespace fs = std::filesystem;

namespace {

dgs::EngineKey make_key(std::string tensorrt, std::string gpu, std::string cc, std::string cuda, std::string onnx,
                        std::string precision, dgs::BatchProfile profile, int workspace) {
  dgs::EngineKey key;
  key.tensorrt = std::move(tensorrt);
  key.gpu = std::move(gpu);
  key.compute_capability = std::move(cc);
  key.cuda = std::move(cuda);
  key.onnx_sha256 = std::move(onnx);
  key.precision = std::move(precision);
  key.profile = profile;
  key.workspace_mib = workspace;
  return key;
}

dgs::EngineKey orin() {
  std::string onnx = "5f0c";
  for (int i = 0; i < 30; ++i) onnx += "e2";
  return make_key("10.3.0", "Orin", "8.7", "12.6", onnx, "fp16", {1, 32, 32}, 1024);
}

// A fresh folder under the test's temporary directory, removed at the end.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "dgs-engine-cache-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::vector<char> plan_bytes(std::size_t size) {
  std::vector<char> plan(size);
  for (std::size_t i = 0; i < size; ++i) plan[i] = static_cast<char>((i * 7 + 3) % 256);
  return plan;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

// Whether `fd` becomes readable within `ms` milliseconds.
bool readable_within(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, ms) == 1;
}

}  // namespace

// Expected values: dgs_sdk.engine_cache.EngineKey(...).file_stem and .timing_cache_stem for the same fields.
TEST(EngineKey, EqualsPythonsKey) {
  auto key = orin();
  EXPECT_EQ(key.canonical_json(),
            "{\"cache_format\":1,\"compute_capability\":\"8.7\",\"cuda\":\"12.6\",\"gpu\":\"Orin\",\"onnx_sha256\":\"" +
                key.onnx_sha256 +
                "\",\"precision\":\"fp16\",\"profile\":\"1:32:32\",\"tensorrt\":\"10.3.0\",\"workspace_mib\":1024}");
  EXPECT_EQ(key.file_stem(),
            "fp16-b1-32-32-trt10.3.0-sm87-273ad3530cca9494635024eda48ff343fd456645926834c5c22a57c8fc71e00d");
  EXPECT_EQ(key.timing_cache_stem(), "timing-10.3.0-sm87");

  auto h100 = make_key("11.4.0.106", "NVIDIA H100 80GB HBM3", "9.0", "13.0", std::string(64, '0'), "int8", {4, 4, 4}, 1);
  EXPECT_EQ(h100.file_stem(),
            "int8-b4-4-4-trt11.4.0.106-sm90-cf4e5b42f90ba8f47c25d01524dc379b6a60ec1a7ee0b99c702b304f3234db8c");
  EXPECT_EQ(h100.timing_cache_stem(), "timing-11.4.0.106-sm90");

  std::string ab;
  for (int i = 0; i < 32; ++i) ab += "ab";
  auto unicode = make_key("10.3.0+cuda/\xc3\xbc", "Jetson Orin Nano (D\xc3\xa9veloppeur) \xf0\x9f\x98\x80", "8.7",
                          "12.6", ab, "fp16", {1, 1, 1}, 2048);
  EXPECT_EQ(unicode.file_stem(),
            "fp16-b1-1-1-trt10.3.0_cuda__-sm87-2a7d146381e5578f2fbda51f3b16e385e0d38dc4a1e5e2f665c47672156149ca");
  EXPECT_NE(unicode.canonical_json().find("\"Jetson Orin Nano (D\\u00e9veloppeur) \\ud83d\\ude00\""),
            std::string::npos);
}

TEST(EngineKey, CanonicalJsonEscapesAsPython) {
  // json.dumps({"b": [1, True, None], "a": "q\"\\\n\t\x01\x7f\u2028"}, sort_keys=True, separators=(",", ":"))
  EXPECT_EQ(dgs::canonical_json("{\"b\": [1, true, null], \"a\": \"q\\\"\\\\\\n\\t\\u0001\\u007f\\u2028\"}"),
            "{\"a\":\"q\\\"\\\\\\n\\t\\u0001\\u007f\\u2028\",\"b\":[1,true,null]}");
  EXPECT_EQ(dgs::canonical_json("{\"\xc3\xa9\": 1, \"z\": 2, \"Z\": 3}"), "{\"Z\":3,\"z\":2,\"\\u00e9\":1}");
  EXPECT_THROW(dgs::canonical_json("{"), dgs::Error);
  auto bad = orin();
  bad.gpu = "\xff";
  EXPECT_THROW(bad.digest(), dgs::Error);
}

TEST(BatchProfile, ParsesAsPython) {
  EXPECT_EQ(dgs::BatchProfile::parse("1:8:32"), (dgs::BatchProfile{1, 8, 32}));
  EXPECT_EQ(dgs::BatchProfile::parse(" 4 "), (dgs::BatchProfile{4, 4, 4}));
  EXPECT_EQ(dgs::BatchProfile::parse("1:8:32").str(), "1:8:32");
  for (const char* bad : {"", "1:2", "0:1:1", "8:1:32", "1:x:3", "-1", "1:2:3:4"}) {
    EXPECT_THROW(dgs::BatchProfile::parse(bad), dgs::Error) << bad;
  }
}

TEST(CacheDir, FollowsTheEnvironment) {
  std::string saved_dgs = std::getenv("DGS_CACHE_DIR") ? std::getenv("DGS_CACHE_DIR") : "";
  std::string saved_xdg = std::getenv("XDG_CACHE_HOME") ? std::getenv("XDG_CACHE_HOME") : "";
  std::string saved_home = std::getenv("HOME") ? std::getenv("HOME") : "";
  ::setenv("HOME", "/home/someone", 1);
  ::setenv("DGS_CACHE_DIR", "/srv/dgs//cache/", 1);
  ::setenv("XDG_CACHE_HOME", "/xdg", 1);
  EXPECT_EQ(dgs::cache_dir(), "/srv/dgs/cache");
  ::setenv("DGS_CACHE_DIR", "~/c", 1);
  EXPECT_EQ(dgs::cache_dir(), "/home/someone/c");
  ::setenv("DGS_CACHE_DIR", "", 1);  // empty counts as unset
  EXPECT_EQ(dgs::cache_dir(), "/xdg/dgs");
  ::setenv("XDG_CACHE_HOME", "relative", 1);  // must be absolute
  EXPECT_EQ(dgs::cache_dir(), "/home/someone/.cache/dgs");
  ::unsetenv("XDG_CACHE_HOME");
  EXPECT_EQ(dgs::cache_dir(), "/home/someone/.cache/dgs");
  EXPECT_EQ(dgs::EngineCache("/r").folder(), "/r/engines");
  EXPECT_EQ(dgs::EngineCache("/r").lock_path("k"), "/r/engines/locks/k.lock");
  auto restore = [](const char* name, const std::string& value) {
    value.empty() ? ::unsetenv(name) : ::setenv(name, value.c_str(), 1);
  };
  restore("DGS_CACHE_DIR", saved_dgs);
  restore("XDG_CACHE_HOME", saved_xdg);
  restore("HOME", saved_home);
}

TEST(EngineCache, StoresAndLoads) {
  TempDir dir;
  dgs::EngineCache cache(dir.path());
  auto key = orin();
  EXPECT_FALSE(cache.load(key));
  cache.store(key, plan_bytes(5000), "models/a.dgs", 1.23456);
  auto plan = cache.load(key);
  ASSERT_TRUE(plan);
  EXPECT_EQ(*plan, plan_bytes(5000));
  EXPECT_EQ(cache.plan_path(key), dir.path() + "/engines/" + key.file_stem() + ".plan");
  std::string sidecar = read_text(cache.sidecar_path(key));
  EXPECT_NE(sidecar.find("\"key\": \"" + key.digest() + "\""), std::string::npos);
  EXPECT_NE(sidecar.find("\"build_seconds\": 1.235"), std::string::npos);
  EXPECT_NE(sidecar.find("\"plan_bytes\": 5000"), std::string::npos);
  for (const auto& entry : fs::directory_iterator(cache.folder())) {
    EXPECT_NE(entry.path().extension(), ".tmp") << entry.path();  // no temporary file left behind
  }
  auto other = key;
  other.workspace_mib = 1;
  EXPECT_FALSE(cache.load(other));
  auto found = cache.find_for_target(other);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->digest(), key.digest());
  other.precision = "int8";
  EXPECT_FALSE(cache.find_for_target(other));
}

TEST(EngineCache, RefusesDamagedEntries) {
  TempDir dir;
  dgs::EngineCache cache(dir.path());
  auto key = orin();
  auto reset = [&] { cache.store(key, plan_bytes(3000), "a.dgs", 1.0); };
  reset();
  std::string sidecar = read_text(cache.sidecar_path(key));

  auto damaged = plan_bytes(3000);
  damaged[10] ^= 1;
  write_text(cache.plan_path(key), std::string(damaged.begin(), damaged.end()));
  EXPECT_FALSE(cache.load(key)) << "a plan whose sha256 differs";
  reset();
  write_text(cache.plan_path(key), std::string(2999, 'x'));
  EXPECT_FALSE(cache.load(key)) << "a plan of another size";
  reset();
  fs::remove(cache.plan_path(key));
  EXPECT_FALSE(cache.load(key)) << "no plan";
  reset();
  fs::remove(cache.sidecar_path(key));
  EXPECT_FALSE(cache.load(key)) << "no sidecar";
  reset();
  write_text(cache.sidecar_path(key), sidecar.substr(0, sidecar.size() / 2));
  EXPECT_FALSE(cache.load(key)) << "a sidecar cut short";
  reset();
  auto at = sidecar.find(key.digest());
  write_text(cache.sidecar_path(key), sidecar.substr(0, at) + std::string(64, 'a') + sidecar.substr(at + 64));
  EXPECT_FALSE(cache.load(key)) << "a sidecar naming another key";
  reset();
  write_text(cache.sidecar_path(key), sidecar.substr(0, sidecar.size() - 2) + ",\n  \"pad\": \"" +
                                          std::string(1 << 20, ' ') + "\"\n}");
  EXPECT_FALSE(cache.load(key)) << "a sidecar over 1 MiB";
  reset();
  EXPECT_TRUE(cache.load(key));
  cache.remove(key);
  EXPECT_FALSE(fs::exists(cache.plan_path(key)) || fs::exists(cache.sidecar_path(key)));
}

TEST(EngineCache, BuildsOnceThenLoads) {
  TempDir dir;
  dgs::EngineCache cache(dir.path());
  auto key = orin();
  int builds = 0;
  std::vector<char> loaded;
  auto load = [&](const std::vector<char>& plan) {
    loaded = plan;
    return true;
  };
  auto build = [&] {
    ++builds;
    return plan_bytes(100 + builds);
  };
  EXPECT_TRUE(cache.get_or_build(key, load, build, "a.dgs"));
  EXPECT_FALSE(cache.get_or_build(key, load, build, "a.dgs"));
  EXPECT_EQ(builds, 1);
  EXPECT_EQ(loaded, plan_bytes(101));

  // A cached plan the runtime refuses (another version's) is removed and built again.
  auto refuse_old = [&](const std::vector<char>& plan) { return plan != plan_bytes(101); };
  EXPECT_TRUE(cache.get_or_build(key, refuse_old, build, "a.dgs"));
  EXPECT_EQ(builds, 2);
  EXPECT_EQ(*cache.load(key), plan_bytes(102));

  // A plan refused right after its build is an error, and is not left in the cache.
  cache.remove(key);
  auto refuse_all = [](const std::vector<char>&) { return false; };
  try {
    cache.get_or_build(key, refuse_all, build, "a.dgs");
    FAIL() << "no error";
  } catch (const dgs::Error& e) {
    EXPECT_EQ(e.status(), dgs::Status::inference);
    EXPECT_NE(std::string(e.what()).find(cache.plan_path(key)), std::string::npos);
  }
  EXPECT_FALSE(cache.load(key));
}

TEST(EngineCache, UnwritableFolderIsAnIoError) {
  TempDir dir;
  write_text(dir.path() + "/file", "x");
  dgs::EngineCache cache(dir.path() + "/file");  // engines/ cannot be made under a file
  try {
    cache.store(orin(), plan_bytes(10), "a.dgs", 1.0);
    FAIL() << "no error";
  } catch (const dgs::Error& e) {
    EXPECT_EQ(e.status(), dgs::Status::io);
    EXPECT_NE(std::string(e.what()).find("DGS_CACHE_DIR"), std::string::npos);
  }
  EXPECT_THROW(dgs::EngineCache::Lock(dir.path() + "/file/locks/k.lock"), dgs::Error);
}

// A lock held in one process makes another wait, through flock on the same file as Python's filelock.
TEST(EngineCacheLock, ExcludesAnotherProcess) {
  TempDir dir;
  std::string path = dgs::EngineCache(dir.path()).lock_path("key");
  int to_parent[2], to_child[2];
  ASSERT_EQ(::pipe(to_parent), 0);
  ASSERT_EQ(::pipe(to_child), 0);
  std::optional<dgs::EngineCache::Lock> held;
  held.emplace(path);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // waits for the parent's lock, says so once it has it, holds it until told
    ::alarm(30);  // never outlives a broken parent
    dgs::EngineCache::Lock lock(path);
    char c = 'L';
    if (::write(to_parent[1], &c, 1) != 1) ::_exit(2);
    if (::read(to_child[0], &c, 1) != 1) ::_exit(3);
    ::_exit(0);
  }
  EXPECT_FALSE(readable_within(to_parent[0], 500)) << "the child took a lock the parent holds";
  held.reset();
  EXPECT_TRUE(readable_within(to_parent[0], 20000)) << "the child did not get the lock once released";
  // The child holds it now: flock on the same file (what filelock does) is refused.
  int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  EXPECT_NE(::flock(fd, LOCK_EX | LOCK_NB), 0);
  char c = 'x';
  ASSERT_EQ(::write(to_child[1], &c, 1), 1);
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0) << "released when the child's lock ended";
  ::close(fd);
  for (int end : {to_parent[0], to_parent[1], to_child[0], to_child[1]}) ::close(end);
  EXPECT_TRUE(fs::exists(path)) << "the lock file stays (as filelock leaves it)";
}
