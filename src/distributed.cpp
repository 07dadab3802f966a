// The one file that talks to c10d: LibTorch's API moved between 1.13 (process groups derive from
// c10d::ProcessGroup) and 2.x (they derive from c10d::Backend), and only this file follows it.
// CMake (cmake/imcap_distributed.cmake) defines USE_C10D_GLOO / USE_C10D_NCCL here alone, when
// a probe found the backend usable.
#include "imcap/distributed.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <type_traits>
#include <utility>

#include <fmt/format.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "imcap/error.hpp"

#if IMCAP_HAVE_C10D_GLOO || IMCAP_HAVE_C10D_NCCL
#define IMCAP_HAVE_C10D 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#if IMCAP_HAVE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#if IMCAP_HAVE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace imcap {

namespace {

// LibTorch 2.4+ asks for the libuv TCPStore by default, and builds without libuv (Debian 13's
// 2.6) then fail every rendezvous ("use_libuv was requested but PyTorch was build without libuv
// support"). The classic store runs everywhere and speaks the same protocol (torchrun's agent
// may serve either). 1.13 has no such option.
template <typename Options, typename = void>
struct HasUseLibUV : std::false_type {};
template <typename Options>
struct HasUseLibUV<Options, std::void_t<decltype(std::declval<Options&>().useLibUV)>>
    : std::true_type {};
template <typename Options>
void use_classic_store(Options& options) {
  if constexpr (HasUseLibUV<Options>::value) options.useLibUV = false;
}

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

long env_integer(const char* name, long fallback, long low, long high) {
  const auto text = env(name);
  if (!text) return fallback;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text->c_str(), &end, 10);
  if (errno != 0 || end == text->c_str() || *end != '\0' || v < low || v > high)
    throw InvalidArgument(fmt::format(
        "environment variable {}='{}': expected an integer from {} to {}", name, *text, low, high));
  return v;
}

void check_options(const DistributedOptions& o) {
  if (o.world_size < 1)
    throw InvalidArgument(
        fmt::format("distributed: world size {} must be at least 1", o.world_size));
  if (o.rank < 0 || o.rank >= o.world_size)
    throw InvalidArgument(
        fmt::format("distributed: rank {} is not in 0 to {}", o.rank, o.world_size - 1));
  if (o.master_port < 1 || o.master_port > 65535)
    throw InvalidArgument(fmt::format("distributed: port {} is not in 1 to 65535", o.master_port));
  // The bound keeps the milliseconds (and c10d's own arithmetic on them) far from overflow.
  if (!(o.timeout_seconds > 0 && o.timeout_seconds <= DistributedOptions::kMaxTimeoutSeconds))
    throw InvalidArgument(fmt::format("distributed: timeout {} s must be above 0 and at most {}",
                                      o.timeout_seconds, DistributedOptions::kMaxTimeoutSeconds));
}

}  // namespace

std::optional<DistributedOptions> distributed_options_from_env() {
  if (!env("WORLD_SIZE")) return std::nullopt;
  DistributedOptions o;
  o.world_size = static_cast<int>(env_integer("WORLD_SIZE", 1, 1, 1 << 20));
  if (!env("RANK"))
    throw InvalidArgument("environment variable RANK is not set, but WORLD_SIZE is");
  o.rank = static_cast<int>(env_integer("RANK", 0, 0, o.world_size - 1));
  o.local_rank = static_cast<int>(env_integer("LOCAL_RANK", 0, 0, 1 << 20));
  o.master_addr = env("MASTER_ADDR").value_or("127.0.0.1");
  o.master_port = static_cast<int>(env_integer("MASTER_PORT", 29500, 1, 65535));
  o.agent_store = env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  o.restart_count = static_cast<int>(env_integer("TORCHELASTIC_RESTART_COUNT", 0, 0, 1 << 30));
  return o;
}

bool has_distributed_support() {
#if IMCAP_HAVE_C10D
  return true;
#else
  return false;
#endif
}

bool has_nccl_support() {
#if IMCAP_HAVE_C10D_NCCL
  return true;
#else
  return false;
#endif
}

#if IMCAP_HAVE_C10D

namespace {

#if TORCH_VERSION_MAJOR >= 2
using C10dBackend = c10d::Backend;
#else
using C10dBackend = c10d::ProcessGroup;
#endif

// c10::Error's what() carries a C++ backtrace; users need the message.
std::string describe(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return c10->what_without_backtrace();
  return e.what();
}

[[maybe_unused]] bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

[[maybe_unused]] std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const auto end = text.find(sep, start);
    const auto item = text.substr(start, end == std::string::npos ? end : end - start);
    if (!item.empty()) out.push_back(item);
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}

}  // namespace

struct ProcessGroup::Impl {
  DistributedOptions options;
  c10::Device device = c10::kCPU;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<C10dBackend> group;
  const char* backend = "gloo";
  bool failed = false;

  std::chrono::milliseconds timeout() const {
    return std::chrono::milliseconds(static_cast<std::int64_t>(options.timeout_seconds * 1000.0));
  }

  // Runs one collective (or several in flight), turning c10d's and Gloo's exceptions into an
  // imcap::Error that says which rank failed at what.
  template <typename Fn>
  auto guarded(const char* what, Fn&& fn) -> decltype(fn()) {
    if (failed)
      throw Error(fmt::format("distributed: {} on rank {}: the process group failed earlier", what,
                              options.rank));
    try {
      return fn();
    } catch (const std::exception& e) {
      failed = true;
      throw Error(fmt::format(
          "distributed: {} failed on rank {} of {}: {} (another process died, or did not "
          "take part within {} s; see --dist-timeout)",
          what, options.rank, options.world_size, describe(e), options.timeout_seconds));
    }
  }

  bool on_backend_device(const at::Tensor& t) const { return t.device() == device; }
};

ProcessGroup::ProcessGroup(const DistributedOptions& options, const c10::Device& device)
    : impl_(std::make_unique<Impl>()) {
  check_options(options);
  Impl& s = *impl_;
  s.options = options;
  s.device = device;
#if !IMCAP_HAVE_C10D_GLOO
  if (!device.is_cuda())
    throw Error(
        "distributed: this build's c10d has NCCL but not Gloo: data-parallel training needs "
        "--device cuda");
#endif
  const auto timeout = s.timeout();
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(options.master_port);
    so.isServer = !options.agent_store && options.rank == 0;
    so.numWorkers = static_cast<std::size_t>(options.world_size);
    so.waitWorkers = !options.agent_store;
    so.timeout = timeout;
    use_classic_store(so);
    c10::intrusive_ptr<c10d::Store> base =
        c10::make_intrusive<c10d::TCPStore>(options.master_addr, so);
    // torchrun's agent serves the store and keys each restart's workers apart, as
    // torch.distributed's env:// rendezvous does.
    if (options.agent_store)
      base = c10::make_intrusive<c10d::PrefixStore>(
          fmt::format("/worker/attempt_{}", options.restart_count), base);
    s.store = c10::make_intrusive<c10d::PrefixStore>("imcap/", base);
  } catch (const std::exception& e) {
    throw Error(fmt::format(
        "distributed: rank {} of {} could not meet the others at the TCPStore {}:{} within {} s: "
        "{}",
        options.rank, options.world_size, options.master_addr, options.master_port,
        options.timeout_seconds, describe(e)));
  }
  try {
    if (device.is_cuda()) {
#if IMCAP_HAVE_C10D_NCCL
      // Without async error handling a dead or hung peer blocks NCCL forever; with it, the
      // watchdog aborts the communicators once a collective exceeds the timeout.
      ::setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1", /*overwrite=*/0);
      ::setenv("NCCL_ASYNC_ERROR_HANDLING", "1", /*overwrite=*/0);
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(device.has_index() ? device.index() : 0));
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = timeout;
      s.group = c10::make_intrusive<c10d::ProcessGroupNCCL>(s.store, options.rank,
                                                            options.world_size, nccl_options);
      s.backend = "nccl";
#else
      // Gloo on CPU copies: correct, slower than NCCL.
      s.device = c10::kCPU;
#endif
    }
#if IMCAP_HAVE_C10D_GLOO
    if (!s.group) {
      auto gloo_options = c10d::ProcessGroupGloo::Options::create(timeout);
      if (const auto ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname)
        for (const auto& name : split(ifname, ','))
          gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
      else if (is_loopback(options.master_addr))
        gloo_options->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else
        gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      s.group = c10::make_intrusive<c10d::ProcessGroupGloo>(s.store, options.rank,
                                                            options.world_size, gloo_options);
    }
#else
    if (!s.group)
      throw Error(
          "distributed: this build's c10d has NCCL but not Gloo: data-parallel training needs "
          "--device cuda");
#endif
  } catch (const std::exception& e) {
    throw Error(fmt::format("distributed: rank {} of {} could not connect to the others ({}): {}",
                            options.rank, options.world_size, s.device.is_cuda() ? "nccl" : "gloo",
                            describe(e)));
  }
}

ProcessGroup::~ProcessGroup() {
  // A group whose peer died or hung may still have collectives queued that would each wait
  // out the timeout in the destructor; the process is about to exit with an error anyway.
  if (impl_ && impl_->failed) {
    impl_->group.release();
    impl_->store.release();
  }
}

int ProcessGroup::rank() const { return impl_->options.rank; }
int ProcessGroup::world_size() const { return impl_->options.world_size; }
const char* ProcessGroup::backend() const { return impl_->backend; }
c10::Device ProcessGroup::device() const { return impl_->device; }

void ProcessGroup::broadcast(std::vector<at::Tensor>& tensors, int root) {
  Impl& s = *impl_;
  if (root < 0 || root >= s.options.world_size)
    throw InvalidArgument(fmt::format("distributed: broadcast root {} is not a rank", root));
  s.guarded("broadcast", [&] {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    std::vector<std::vector<at::Tensor>> args;
    args.reserve(tensors.size());
    for (auto& t : tensors) {
      if (!t.defined()) continue;
      const bool direct = s.on_backend_device(t) && t.is_contiguous();
      args.push_back({direct ? t : t.to(s.device).contiguous()});
      c10d::BroadcastOptions bo;
      bo.rootRank = root;
      works.push_back(s.group->broadcast(args.back(), bo));
    }
    for (auto& w : works) w->wait();
    std::size_t k = 0;
    torch::NoGradGuard no_grad;
    for (auto& t : tensors) {
      if (!t.defined()) continue;
      if (args[k][0].is_same(t)) {
        // Written by the backend in place: bump the version as copy_ would, so that caches
        // keyed on it (the encoder's folded weights, compressed decode weights) see the change.
        t.unsafeGetTensorImpl()->bump_version();
      } else {
        t.copy_(args[k][0]);
      }
      ++k;
    }
  });
}

void ProcessGroup::all_reduce(at::Tensor& tensor, ReduceOp op) {
  Impl& s = *impl_;
  s.guarded("all_reduce", [&] {
    const bool direct = s.on_backend_device(tensor) && tensor.is_contiguous();
    std::vector<at::Tensor> arg{direct ? tensor : tensor.to(s.device).contiguous()};
    c10d::AllreduceOptions ao;
    ao.reduceOp = op == ReduceOp::kMax ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
    s.group->allreduce(arg, ao)->wait();
    if (!direct) {
      torch::NoGradGuard no_grad;
      tensor.copy_(arg[0]);
    } else {
      tensor.unsafeGetTensorImpl()->bump_version();  // written in place (see broadcast)
    }
  });
}

void ProcessGroup::all_reduce_mean(std::vector<at::Tensor>& tensors, std::size_t bucket_bytes) {
  Impl& s = *impl_;
  // Buckets in order, per (dtype, device): a new bucket starts when the next tensor would not
  // fit. The same tensors give the same buckets on every rank, as the collectives require.
  struct Bucket {
    std::vector<std::size_t> members;
    std::size_t bytes = 0;
  };
  std::vector<Bucket> buckets;
  std::map<std::pair<int, std::string>, std::size_t> open;  // (dtype, device) -> bucket
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    if (!t.defined()) continue;
    const std::size_t bytes = static_cast<std::size_t>(t.numel()) * t.element_size();
    const auto key = std::make_pair(static_cast<int>(t.scalar_type()), t.device().str());
    auto it = open.find(key);
    if (it == open.end() ||
        (buckets[it->second].bytes > 0 && buckets[it->second].bytes + bytes > bucket_bytes)) {
      buckets.emplace_back();
      it = open.insert_or_assign(key, buckets.size() - 1).first;
    }
    buckets[it->second].members.push_back(i);
    buckets[it->second].bytes += bytes;
  }
  torch::NoGradGuard no_grad;
  s.guarded("all_reduce of gradients", [&] {
    std::vector<std::vector<at::Tensor>> flats;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    flats.reserve(buckets.size());
    for (const auto& b : buckets) {
      std::vector<at::Tensor> parts;
      for (const auto i : b.members) parts.push_back(tensors[i].reshape({-1}));
      flats.push_back({torch::cat(parts).to(s.device)});
      c10d::AllreduceOptions ao;
      ao.reduceOp = c10d::ReduceOp::SUM;
      works.push_back(s.group->allreduce(flats.back(), ao));
    }
    // Every launched collective is waited for, even after a failure, so none is left queued.
    std::exception_ptr first_error;
    for (auto& w : works) {
      try {
        w->wait();
      } catch (...) {
        if (!first_error) first_error = std::current_exception();
      }
    }
    if (first_error) std::rethrow_exception(first_error);
    const double scale = 1.0 / static_cast<double>(s.options.world_size);
    for (std::size_t b = 0; b < buckets.size(); ++b) {
      auto flat = flats[b][0].mul_(scale);
      std::int64_t offset = 0;
      for (const auto i : buckets[b].members) {
        auto& t = tensors[i];
        t.copy_(flat.narrow(0, offset, t.numel()).view_as(t));
        offset += t.numel();
      }
    }
  });
}

std::string ProcessGroup::broadcast_bytes(const std::string& bytes, int root) {
  Impl& s = *impl_;
  auto size = torch::tensor({static_cast<std::int64_t>(bytes.size())}, torch::kInt64);
  std::vector<at::Tensor> one{size};
  broadcast(one, root);
  const auto n = one[0].item<std::int64_t>();
  auto data = torch::empty({n}, torch::kUInt8);
  if (s.options.rank == root && n > 0) std::memcpy(data.data_ptr(), bytes.data(), bytes.size());
  std::vector<at::Tensor> payload{data};
  if (n > 0) broadcast(payload, root);
  return std::string(reinterpret_cast<const char*>(payload[0].data_ptr()),
                     static_cast<std::size_t>(n));
}

void ProcessGroup::barrier() {
  Impl& s = *impl_;
  s.guarded("barrier", [&] { s.group->barrier()->wait(); });
}

#else  // no c10d

struct ProcessGroup::Impl {};

namespace {
[[noreturn]] void no_support() {
  throw Error(
      "this build has no distributed support (LibTorch's c10d with Gloo was not found when imcap "
      "was configured; see docs/distributed.md)");
}
}  // namespace

ProcessGroup::ProcessGroup(const DistributedOptions& options, const c10::Device&) {
  check_options(options);
  no_support();
}
ProcessGroup::~ProcessGroup() = default;
int ProcessGroup::rank() const { no_support(); }
int ProcessGroup::world_size() const { no_support(); }
const char* ProcessGroup::backend() const { no_support(); }
c10::Device ProcessGroup::device() const { no_support(); }
void ProcessGroup::broadcast(std::vector<at::Tensor>&, int) { no_support(); }
void ProcessGroup::all_reduce(at::Tensor&, ReduceOp) { no_support(); }
void ProcessGroup::all_reduce_mean(std::vector<at::Tensor>&, std::size_t) { no_support(); }
std::string ProcessGroup::broadcast_bytes(const std::string&, int) { no_support(); }
void ProcessGroup::barrier() { no_support(); }

#endif

}  // namespace imcap
