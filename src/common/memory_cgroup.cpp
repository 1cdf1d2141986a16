#include "common/memory_cgroup.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/error.h"

namespace flashlm {
namespace {

constexpr const char* kRoot = "/sys/fs/cgroup/memory";

bool write_file(const std::string& path, const std::string& value) {
  std::ofstream f(path);
  f << value;
  f.flush();
  return static_cast<bool>(f);
}

uint64_t read_number(const std::string& path) {
  std::ifstream f(path);
  uint64_t v = 0;
  f >> v;
  return v;
}

}  // namespace

std::unique_ptr<MemoryCgroup> MemoryCgroup::create(const std::string& name,
                                                   std::string& why_not) {
  namespace fs = std::filesystem;
  if (!fs::exists(fs::path(kRoot) / "memory.limit_in_bytes")) {
    why_not = fmt::format("no cgroup v1 memory controller at {}", kRoot);
    return nullptr;
  }
  const std::string path = fmt::format("{}/{}", kRoot, name);
  std::error_code ec;
  if (fs::exists(path)) fs::remove(path, ec);  // a group left by a killed run (empty)
  if (!fs::create_directory(path, ec)) {
    why_not = fmt::format("cannot create {} ({}); cgroup limits need root",
                          path, ec ? ec.message() : "exists and busy");
    return nullptr;
  }
  return std::unique_ptr<MemoryCgroup>(new MemoryCgroup(path));
}

void MemoryCgroup::set_limit(uint64_t bytes) {
  if (!write_file(path_ + "/memory.limit_in_bytes", std::to_string(bytes))) {
    fail("cannot set {}/memory.limit_in_bytes to {}: {}", path_, bytes, std::strerror(errno));
  }
  // With swap accounted, swap must not extend the limit (absent when the kernel lacks it).
  if (std::filesystem::exists(path_ + "/memory.memsw.limit_in_bytes")) {
    write_file(path_ + "/memory.memsw.limit_in_bytes", std::to_string(bytes));
  }
}

uint64_t MemoryCgroup::limit_bytes() const {
  const uint64_t limit = read_number(path_ + "/memory.limit_in_bytes");
  return limit >= (uint64_t{1} << 62) ? 0 : limit;
}

MemoryCgroup::~MemoryCgroup() {
  // The kernel moves leftover page cache to the parent when the group goes.
  ::rmdir(path_.c_str());
}

void MemoryCgroup::add_process(pid_t pid) {
  if (!write_file(path_ + "/cgroup.procs", std::to_string(pid))) {
    fail("cannot move process {} into {}: {}", pid, path_, std::strerror(errno));
  }
}

uint64_t MemoryCgroup::peak_bytes() const { return read_number(path_ + "/memory.max_usage_in_bytes"); }
uint64_t MemoryCgroup::limit_hits() const { return read_number(path_ + "/memory.failcnt"); }

uint64_t MemoryCgroup::oom_kills() const {
  std::ifstream f(path_ + "/memory.oom_control");
  for (std::string key; f >> key;) {
    uint64_t value = 0;
    f >> value;
    if (key == "oom_kill") return value;
  }
  return 0;
}

uint64_t MemoryCgroup::refaults() const {
  std::ifstream f(path_ + "/memory.stat");
  for (std::string key; f >> key;) {
    uint64_t value = 0;
    f >> value;
    if (key == "workingset_refault_file") return value;
  }
  return 0;
}

LimitedRun run_in_cgroup(MemoryCgroup& group,
                         const std::function<int(const std::function<void(const std::string&)>&
                                                     write_result)>& body) {
  int fds[2];
  if (pipe(fds) != 0) fail("pipe: {}", std::strerror(errno));
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) fail("fork: {}", std::strerror(errno));
  if (pid == 0) {
    ::close(fds[0]);
    int status = 1;
    try {
      group.add_process(getpid());
      status = body([&](const std::string& result) {
        for (size_t done = 0; done < result.size();) {
          const ssize_t n = ::write(fds[1], result.data() + done, result.size() - done);
          if (n <= 0) break;
          done += static_cast<size_t>(n);
        }
      });
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      status = 1;
    }
    std::fflush(nullptr);
    ::_exit(status);
  }
  ::close(fds[1]);
  LimitedRun run;
  char buffer[65536];
  for (ssize_t n; (n = ::read(fds[0], buffer, sizeof buffer)) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    run.output.append(buffer, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) run.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) run.signal = WTERMSIG(status);
  run.peak_bytes = group.peak_bytes();
  run.limit_hits = group.limit_hits();
  run.oom_kills = group.oom_kills();
  run.refaults = group.refaults();
  return run;
}

void drop_page_cache(const std::vector<std::string>& files) {
  ::sync();
  if (write_file("/proc/sys/vm/drop_caches", "3")) return;
  for (const std::string& path : files) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) continue;
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

}  // namespace flashlm
