// `imcap train --nproc N`: a local launcher that sets up torchrun's environment for N copies of
// the running command (private to the imcap executable).
#pragma once

#include <string>
#include <vector>

namespace imcap::cli {

/// This process's command line (from /proc/self/cmdline), argv[0] included.
std::vector<std::string> own_command_line();

/// Runs `nproc` copies of the imcap executable with `args` (argv[1..]) on this machine, with
/// RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and MASTER_PORT (a
/// free port) set as torchrun sets them, and waits for them. SIGINT and SIGTERM are passed on.
/// When one exits with an error or is killed, the others are stopped (SIGTERM, SIGKILL after
/// `grace_seconds`) and Error is thrown naming the rank and its status.
void run_local_workers(int nproc, const std::vector<std::string>& args, double grace_seconds = 10);

}  // namespace imcap::cli
