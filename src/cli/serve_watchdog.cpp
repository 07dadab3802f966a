#include "cli/serve_watchdog.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

namespace imcap::cli {

namespace {

// "address:port" of a socket address, as cpp-httplib writes a request's remote_addr and
// remote_port; empty for other families.
std::string address_of(const sockaddr_storage& a, int* port) {
  char text[INET6_ADDRSTRLEN] = {0};
  if (a.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(a);
    ::inet_ntop(AF_INET, &v4.sin_addr, text, sizeof text);
    *port = ntohs(v4.sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(a);
    ::inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof text);
    *port = ntohs(v6.sin6_port);
  } else {
    return {};
  }
  return text;
}

}  // namespace

ConnectionWatchdog::ConnectionWatchdog(std::chrono::milliseconds limit) : limit_(limit) {}

ConnectionWatchdog::~ConnectionWatchdog() { stop(); }

void ConnectionWatchdog::start(int port) {
  port_ = port;
  thread_ = std::thread([this] { run(); });
}

void ConnectionWatchdog::stop() {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ConnectionWatchdog::request_started(const std::string& peer) {
  const std::lock_guard<std::mutex> lock(mutex_);
  busy_.insert(peer);
}

void ConnectionWatchdog::request_finished(const std::string& peer) {
  const std::lock_guard<std::mutex> lock(mutex_);
  busy_.erase(peer);
  answered_[peer] = Clock::now();
}

void ConnectionWatchdog::run() {
  const auto period =
      std::clamp(limit_ / 8, std::chrono::milliseconds(50), std::chrono::milliseconds(250));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    wake_.wait_for(lock, period);
    if (stopping_) break;
    lock.unlock();
    scan();
    lock.lock();
  }
}

void ConnectionWatchdog::scan() {
  // The process's sockets connected to the server's port, by inode.
  struct Found {
    int fd;
    std::string peer;
  };
  std::map<unsigned long, Found> found;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (const dirent* e = ::readdir(dir)) {
      char* end = nullptr;
      const long fd = std::strtol(e->d_name, &end, 10);
      if (end == e->d_name || *end != '\0') continue;
      struct stat st {};
      if (::fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
      sockaddr_storage local{}, remote{};
      socklen_t n = sizeof local;
      int local_port = 0, remote_port = 0;
      if (::getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &n) != 0)
        continue;
      if (address_of(local, &local_port).empty() || local_port != port_) continue;
      n = sizeof remote;
      if (::getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&remote), &n) != 0)
        continue;  // the listening socket
      const std::string address = address_of(remote, &remote_port);
      found[static_cast<unsigned long>(st.st_ino)] = {static_cast<int>(fd),
                                                      address + ":" + std::to_string(remote_port)};
    }
    ::closedir(dir);
  }
  const auto now = Clock::now();
  std::vector<std::pair<int, unsigned long>> to_cut;
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      if (!found.count(it->first)) {
        answered_.erase(it->second.peer);
        busy_.erase(it->second.peer);
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
    for (const auto& [inode, f] : found) {
      auto [it, fresh] = connections_.try_emplace(inode, Connection{f.fd, f.peer, now});
      if (fresh) continue;
      Connection& c = it->second;
      if (c.cut || busy_.count(c.peer)) continue;
      auto since = c.seen;
      if (const auto a = answered_.find(c.peer); a != answered_.end())
        since = std::max(since, a->second);
      if (now - since > limit_) {
        c.cut = true;
        to_cut.emplace_back(c.fd, inode);
      }
    }
  }
  for (const auto& [fd, inode] : to_cut) {
    // The same socket still (not a new one that took its number)?
    struct stat st {};
    if (::fstat(fd, &st) == 0 && static_cast<unsigned long>(st.st_ino) == inode) {
      ::shutdown(fd, SHUT_RDWR);
      ++cut_;
    }
  }
}

}  // namespace imcap::cli
