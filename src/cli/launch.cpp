#include "cli/launch.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "detail/io.hpp"
#include "imcap/error.hpp"

extern char** environ;

namespace imcap::cli {

namespace {

volatile std::sig_atomic_t g_forward_signal = 0;

extern "C" void imcap_launcher_on_signal(int sig) { g_forward_signal = sig; }

// A port that was free a moment ago. Rank 0's TCPStore binds it right after; the window is
// the same one torchrun's standalone mode lives with.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw IoError("--nproc: cannot open a socket: " + detail::errno_message(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    ::close(fd);
    throw IoError("--nproc: cannot find a free port on 127.0.0.1: " + detail::errno_message(err));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string own_executable() {
  std::string buf(4096, '\0');
  const auto n = ::readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) throw IoError("--nproc: cannot find this executable (/proc/self/exe)");
  buf.resize(static_cast<std::size_t>(n));
  return buf;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exit code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("signal {} ({})", WTERMSIG(status), ::strsignal(WTERMSIG(status)));
  return fmt::format("status {}", status);
}

bool is_launcher_variable(const char* entry) {
  static const char* const kNames[] = {
      "RANK=",        "LOCAL_RANK=",  "WORLD_SIZE=", "LOCAL_WORLD_SIZE=",
      "MASTER_ADDR=", "MASTER_PORT=", "GROUP_RANK="};
  for (const char* name : kNames)
    if (std::strncmp(entry, name, std::strlen(name)) == 0) return true;
  return false;
}

}  // namespace

std::vector<std::string> own_command_line() {
  const std::string text = detail::read_file("/proc/self/cmdline", 1 << 20);
  std::vector<std::string> args;
  std::size_t start = 0;
  while (start < text.size()) {
    const auto end = text.find('\0', start);
    args.push_back(text.substr(start, end == std::string::npos ? end : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return args;
}

void run_local_workers(int nproc, const std::vector<std::string>& args, double grace_seconds) {
  if (nproc < 1) throw InvalidArgument(fmt::format("--nproc {}: expected at least 1", nproc));
  const std::string exe = own_executable();
  const int port = free_port();
  // Everything execve needs is built before fork: the child only calls async-signal-safe
  // functions.
  std::vector<std::vector<std::string>> envs(static_cast<std::size_t>(nproc));
  for (int r = 0; r < nproc; ++r) {
    auto& e = envs[static_cast<std::size_t>(r)];
    for (char** p = environ; *p != nullptr; ++p)
      if (!is_launcher_variable(*p)) e.emplace_back(*p);
    e.push_back(fmt::format("RANK={}", r));
    e.push_back(fmt::format("LOCAL_RANK={}", r));
    e.push_back(fmt::format("GROUP_RANK=0"));
    e.push_back(fmt::format("WORLD_SIZE={}", nproc));
    e.push_back(fmt::format("LOCAL_WORLD_SIZE={}", nproc));
    e.push_back("MASTER_ADDR=127.0.0.1");
    e.push_back(fmt::format("MASTER_PORT={}", port));
  }
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(exe.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  struct sigaction action {};
  action.sa_handler = imcap_launcher_on_signal;
  sigemptyset(&action.sa_mask);
  struct sigaction old_int {
  }, old_term{};
  ::sigaction(SIGINT, &action, &old_int);
  ::sigaction(SIGTERM, &action, &old_term);
  g_forward_signal = 0;

  const pid_t parent = ::getpid();
  std::vector<pid_t> pids;
  auto signal_all = [&](int sig) {
    for (const pid_t p : pids)
      if (p > 0) ::kill(p, sig);
  };
  for (int r = 0; r < nproc; ++r) {
    std::vector<char*> envp;
    for (auto& s : envs[static_cast<std::size_t>(r)]) envp.push_back(s.data());
    envp.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
      const int err = errno;
      signal_all(SIGKILL);
      for (const pid_t p : pids) ::waitpid(p, nullptr, 0);
      throw Error("--nproc: cannot start a worker: " + detail::errno_message(err));
    }
    if (pid == 0) {
      ::sigaction(SIGINT, &old_int, nullptr);
      ::sigaction(SIGTERM, &old_term, nullptr);
#ifdef __linux__
      // Workers do not outlive a launcher that was killed.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(1);
#endif
      ::execve(exe.c_str(), argv.data(), envp.data());
      ::_exit(127);
    }
    pids.push_back(pid);
  }

  using Clock = std::chrono::steady_clock;
  std::string failure;
  int running = nproc;
  bool stopping = false;
  Clock::time_point kill_at{};
  while (running > 0) {
    if (g_forward_signal != 0) {
      signal_all(g_forward_signal);
      g_forward_signal = 0;
    }
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, WNOHANG);
    if (done > 0) {
      for (std::size_t r = 0; r < pids.size(); ++r) {
        if (pids[r] != done) continue;
        pids[r] = -1;
        --running;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && failure.empty())
          failure =
              fmt::format("worker rank {} of {} failed ({})", r, nproc, describe_status(status));
      }
      if (!failure.empty() && !stopping && running > 0) {
        stopping = true;
        signal_all(SIGTERM);
        kill_at = Clock::now() + std::chrono::milliseconds(static_cast<long>(grace_seconds * 1e3));
      }
      continue;
    }
    if (done < 0 && errno != EINTR && errno != ECHILD) break;
    if (stopping && Clock::now() >= kill_at) signal_all(SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  if (!failure.empty()) throw Error(failure);
}

}  // namespace imcap::cli
