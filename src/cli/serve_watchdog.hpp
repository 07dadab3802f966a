// imcap serve's guard against slow clients. cpp-httplib times out a read that waits too long,
// but a client that sends one header line every few seconds (slow loris) never trips it and
// holds a connection thread for as long as it likes. The watchdog closes such connections: a
// connection must deliver its request's headers within the limit of opening, or of the
// previous response. (Bodies are timed by the request handler, which sees each chunk.)
//
// cpp-httplib does not hand out its sockets, so the watchdog finds them itself: every quarter
// of a second it lists the process's sockets connected to the server's port (/proc/self/fd),
// and shuts down those that have waited longer than the limit without a request reaching the
// handlers. The handlers report each request's start and end by the peer's address. Before
// shutting a socket down the watchdog checks that its number still names the same socket
// (inode); a socket closed and its number reused in the microseconds between that check and
// shutdown() would be cut instead, which costs that client one retry. Linux only (/proc).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>

namespace imcap::cli {

class ConnectionWatchdog {
 public:
  explicit ConnectionWatchdog(std::chrono::milliseconds limit);
  ~ConnectionWatchdog();
  ConnectionWatchdog(const ConnectionWatchdog&) = delete;
  ConnectionWatchdog& operator=(const ConnectionWatchdog&) = delete;

  /// Starts watching the connections to local `port`.
  void start(int port);
  void stop();
  /// A request from `peer` ("address:port") reached the handlers / got its response.
  void request_started(const std::string& peer);
  void request_finished(const std::string& peer);
  /// Connections cut so far.
  std::uint64_t cut() const { return cut_; }

 private:
  using Clock = std::chrono::steady_clock;
  struct Connection {
    int fd;
    std::string peer;
    Clock::time_point seen;
    bool cut = false;
  };
  void run();
  void scan();

  const std::chrono::milliseconds limit_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::map<unsigned long, Connection> connections_;    // by socket inode
  std::set<std::string> busy_;                         // peers with a request in the handlers
  std::map<std::string, Clock::time_point> answered_;  // peer -> its last response
  std::atomic<std::uint64_t> cut_{0};
};

}  // namespace imcap::cli
