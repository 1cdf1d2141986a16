// A memory limit the kernel enforces: a cgroup v1 memory group (Linux, root). Benchmarks run
// each mode in a child process inside one whose limit is the budget, so that every figure is
// what a machine of that size gets, and read back the peak usage (page cache included) and
// whether the limit was hit. The one place a port would supply its own limit (macOS: none;
// a figure there would say it was made without one).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace flashlm {

class MemoryCgroup {
 public:
  // A fresh group with no limit yet, or null with `why_not` saying why (no cgroup v1 memory
  // controller, not root, ...).
  static std::unique_ptr<MemoryCgroup> create(const std::string& name, std::string& why_not);
  ~MemoryCgroup();  // removes the group (its processes must have exited)
  MemoryCgroup(const MemoryCgroup&) = delete;
  MemoryCgroup& operator=(const MemoryCgroup&) = delete;

  void add_process(pid_t pid);
  // Limits the group (swap included where the kernel accounts it); a member may call it.
  void set_limit(uint64_t bytes);
  uint64_t limit_bytes() const;  // 0: no limit
  uint64_t peak_bytes() const;  // the most the group held, page cache included
  uint64_t limit_hits() const;  // times an allocation met the limit (and reclaim ran)
  uint64_t oom_kills() const;   // processes the kernel killed for the limit
  // File pages evicted and read back (workingset_refault_file): a run that thrashes its
  // mapped weights under the limit shows it here.
  uint64_t refaults() const;
  const std::string& path() const { return path_; }

 private:
  explicit MemoryCgroup(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// How a child run inside a group ended, and what the group saw.
struct LimitedRun {
  int exit_code = -1;    // the child's exit status, or -1 when a signal ended it
  int signal = 0;        // the signal that ended it (SIGKILL: most likely the limit)
  uint64_t peak_bytes = 0, limit_hits = 0, oom_kills = 0, refaults = 0;
  std::string output;    // what the child wrote to its result pipe
  bool killed_by_limit() const { return oom_kills > 0 || signal == 9; }
};

// Forks; the child joins `group` and runs `body` (its return value is the exit status),
// writing its result with `write_result`. The parent waits and collects the outcome.
LimitedRun run_in_cgroup(MemoryCgroup& group,
                         const std::function<int(const std::function<void(const std::string&)>&
                                                     write_result)>& body);

// Drops `files` from the page cache so the next run starts cold: the whole cache when this
// process may (root: /proc/sys/vm/drop_caches), else those files' pages (posix_fadvise).
void drop_page_cache(const std::vector<std::string>& files);

}  // namespace flashlm
