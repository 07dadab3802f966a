// Data-parallel training across processes and machines on LibTorch's own c10d: a TCPStore
// rendezvous, then Gloo (CPU) or NCCL (CUDA) collectives. The environment is torchrun's, so the
// launchers clusters already use start imcap as they start PyTorch (docs/distributed.md).
//
//   if (auto env = imcap::distributed_options_from_env()) {      // RANK, WORLD_SIZE, ...
//     auto group = std::make_shared<imcap::ProcessGroup>(*env);  // blocks until all joined
//     imcap::TrainerOptions opts;
//     opts.process_group = group;  // the Trainer shards batches and averages gradients
//   }
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace imcap {

/// Where this process stands in a data-parallel job, and how long it waits for the others.
struct DistributedOptions {
  int rank = 0;        ///< this process, 0 to world_size - 1 (RANK). Default 0.
  int world_size = 1;  ///< processes in the job (WORLD_SIZE). Default 1.
  int local_rank = 0;  ///< this process among those of its machine; picks its GPU. Default 0.
  std::string master_addr = "127.0.0.1";  ///< host of the TCPStore (MASTER_ADDR).
  int master_port = 29500;                ///< port of the TCPStore (MASTER_PORT). Default 29500.
  /// Seconds the rendezvous and each collective may wait for the other processes before they
  /// fail with an error: a hung process is caught by this. Default 300; at most
  /// kMaxTimeoutSeconds.
  double timeout_seconds = 300.0;
  static constexpr double kMaxTimeoutSeconds = 1e6;
  /// The store is already served by torchrun's agent (TORCHELASTIC_USE_AGENT_STORE=True): every
  /// rank connects to it as a client, under the restart's key prefix. Default false: rank 0
  /// serves the store, as torch.distributed's env:// rendezvous does.
  bool agent_store = false;
  int restart_count = 0;  ///< TORCHELASTIC_RESTART_COUNT (key prefix of an agent store).
};

/// The options torchrun's environment describes: RANK, WORLD_SIZE, LOCAL_RANK (default 0),
/// MASTER_ADDR (default 127.0.0.1), MASTER_PORT (default 29500), and torchrun's
/// TORCHELASTIC_USE_AGENT_STORE and TORCHELASTIC_RESTART_COUNT. nullopt when WORLD_SIZE is not
/// set. Throws InvalidArgument naming the variable when one is malformed or out of range.
std::optional<DistributedOptions> distributed_options_from_env();

/// Whether this build has c10d (Gloo for CPU collectives, or NCCL for CUDA ones, or both).
/// Without it, ProcessGroup throws.
bool has_distributed_support();
/// Whether this build has c10d's NCCL backend (CUDA collectives; CUDA tensors go through Gloo
/// on CPU copies otherwise).
bool has_nccl_support();

/// Reductions of ProcessGroup::all_reduce.
enum class ReduceOp { kSum, kMax };

/// A group of processes that run collectives together, in the same order on every rank (the
/// c10d contract). Every collective throws imcap::Error, naming the operation and this rank,
/// when another process died (its connection closed) or did not take part within
/// timeout_seconds. A group that failed is abandoned rather than torn down, so that the process
/// can exit at once instead of waiting on peers that will never answer.
class ProcessGroup {
 public:
  /// Joins the group: rendezvous through a c10d TCPStore at master_addr:master_port, then a
  /// Gloo process group for a CPU `device`, NCCL for a CUDA one (Gloo when LibTorch has no
  /// NCCL). Blocks until all world_size processes have joined or the timeout passes. Throws
  /// InvalidArgument on bad options, Error when the build has no distributed support or the
  /// rendezvous fails.
  explicit ProcessGroup(const DistributedOptions& options, const c10::Device& device = c10::kCPU);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const;
  int world_size() const;
  /// "gloo" or "nccl".
  const char* backend() const;
  /// The device the collectives run on (tensors elsewhere are copied there and back).
  c10::Device device() const;

  /// Replaces each tensor with root's (in place; same shapes and dtypes on every rank).
  void broadcast(std::vector<at::Tensor>& tensors, int root = 0);
  /// Replaces the tensor with the reduction over all ranks (in place).
  void all_reduce(at::Tensor& tensor, ReduceOp op = ReduceOp::kSum);
  /// Replaces each tensor with its mean over all ranks. The tensors are packed into flat buckets
  /// of at most bucket_bytes (one per dtype and device, a tensor larger than that alone), and
  /// each bucket is one all-reduce; the buckets are in flight together. Undefined tensors are
  /// skipped.
  void all_reduce_mean(std::vector<at::Tensor>& tensors, std::size_t bucket_bytes = 25u << 20);
  /// Root's bytes on every rank (any length).
  std::string broadcast_bytes(const std::string& bytes, int root = 0);
  /// Returns when every rank has called it.
  void barrier();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace imcap
