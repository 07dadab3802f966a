// The fused Adam step (src/detail/fused_adam.cpp) against LibTorch's Adam.
#include "catch.hpp"

#include <cmath>
#include <fstream>
#include <future>
#include <map>
#include <thread>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/fused_adam.hpp"
#include "detail/io.hpp"
#include "imcap/captioner.hpp"
#include "imcap/data_loader.hpp"
#include "imcap/error.hpp"
#include "imcap/metrics.hpp"
#include "imcap/synthetic.hpp"
#include "imcap/trainer.hpp"
#include "imcap/weights.hpp"
#include "support.hpp"
#include "tiny.hpp"

TEST_CASE("the trainer's fused Adam step equals torch::optim::Adam and shares its state",
          "[trainer]") {
  using imcap::detail::FusedAdam;
  using torch::optim::AdamOptions;
  using torch::optim::OptimizerParamGroup;
  const int saved_threads = torch::get_num_threads();
  // Parameters of several sizes (one not a multiple of any vector width, one split between
  // threads), with gradients that change every step.
  auto make_params = [] {
    torch::manual_seed(5);
    return std::vector<torch::Tensor>{torch::randn({3}).requires_grad_(),
                                      torch::randn({70000}).requires_grad_(),
                                      torch::randn({17, 9}).requires_grad_()};
  };
  auto set_grads = [](std::vector<torch::Tensor>& params, int step, double scale) {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < params.size(); ++i) {
      auto gen = torch::make_generator<torch::CPUGeneratorImpl>(100 * step + i);
      params[i].mutable_grad() = torch::randn(params[i].sizes(), gen) * (scale * (1.0 + step));
    }
    params[0].mutable_grad() = torch::Tensor();  // a parameter without a gradient is skipped
  };
  // The largest difference relative to 1 + |value|: float rounding leaves a few units in the
  // last place (about 1.2e-7 relative each); one wrong term of the update (of size lr) would
  // leave far more.
  auto max_rel = [](const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
      worst = std::max(worst, ((a[i] - b[i]).abs() / (b[i].abs() + 1)).max().item<double>());
    return worst;
  };
  // Two groups: the defaults, and the last parameter with its own rate, betas and decay.
  auto groups = [](const std::vector<torch::Tensor>& p, const AdamOptions& defaults) {
    std::vector<OptimizerParamGroup> g;
    g.emplace_back(std::vector<torch::Tensor>{p[0], p[1]});
    auto own = std::make_unique<AdamOptions>(defaults);
    own->lr(1e-2).betas({0.8, 0.99}).weight_decay(0.05);
    g.emplace_back(std::vector<torch::Tensor>{p[2]}, std::move(own));
    return g;
  };
  struct Case {
    int threads;
    double weight_decay, eps, grad_scale;
  };
  // Gradients of about 1e-7 make eps (1e-8) matter, as does eps = 0.1 for gradients of about 1.
  for (const Case c : {Case{1, 0, 1e-8, 1}, Case{2, 0, 1e-8, 1}, Case{2, 0.01, 1e-8, 1},
                       Case{1, 0, 1e-8, 1e-7}, Case{2, 0.01, 0.1, 1}}) {
    torch::set_num_threads(c.threads);
    INFO("threads " << c.threads << ", weight decay " << c.weight_decay << ", eps " << c.eps
                    << ", gradient scale " << c.grad_scale);
    const auto options = AdamOptions(3e-2).weight_decay(c.weight_decay).eps(c.eps);
    auto ref_params = make_params();
    auto fused_params = make_params();
    torch::optim::Adam ref(groups(ref_params, options), options);
    FusedAdam fused(groups(fused_params, options), options);
    for (int step = 0; step < 25; ++step) {
      set_grads(ref_params, step, c.grad_scale);
      set_grads(fused_params, step, c.grad_scale);
      const auto version = fused_params[1]._version();
      ref.step();
      fused.step();
      CHECK(fused_params[1]._version() > version);  // caches keyed on versions see the update
    }
    CHECK(torch::equal(fused_params[0], ref_params[0]));  // never stepped
    CHECK(!torch::equal(fused_params[1], make_params()[1]));
    INFO("largest relative difference: " << max_rel(fused_params, ref_params));
    CHECK(max_rel(fused_params, ref_params) < 1e-6);

    // Either optimizer's saved state loads into the other and goes on as the saver does.
    auto save = [](const torch::optim::Optimizer& opt) {
      std::ostringstream out;
      torch::serialize::OutputArchive archive;
      opt.save(archive);
      archive.save_to(out);
      return out.str();
    };
    auto load = [](torch::optim::Optimizer& opt, const std::string& bytes) {
      std::istringstream in(bytes);
      torch::serialize::InputArchive archive;
      archive.load_from(in);
      opt.load(archive);
    };
    auto copy = [](const std::vector<torch::Tensor>& params) {
      std::vector<torch::Tensor> out;
      for (const auto& p : params) out.push_back(p.detach().clone().requires_grad_());
      return out;
    };
    auto into_adam = copy(fused_params);
    auto into_fused = copy(ref_params);
    torch::optim::Adam adam_resumed(groups(into_adam, options), options);
    FusedAdam fused_resumed(groups(into_fused, options), options);
    load(adam_resumed, save(fused));
    load(fused_resumed, save(ref));
    for (auto* params : {&fused_params, &ref_params, &into_adam, &into_fused})
      set_grads(*params, 99, c.grad_scale);
    fused.step();
    ref.step();
    adam_resumed.step();
    fused_resumed.step();
    CHECK(max_rel(into_adam, fused_params) < 1e-6);
    CHECK(max_rel(into_fused, ref_params) < 1e-6);
  }
  torch::set_num_threads(saved_threads);
  // amsgrad is Adam's own step.
  auto a = make_params();
  auto b = make_params();
  torch::optim::Adam ref(a, AdamOptions(1e-2).amsgrad(true));
  FusedAdam fused(b, AdamOptions(1e-2).amsgrad(true));
  for (int step = 0; step < 3; ++step) {
    set_grads(a, step, 1);
    set_grads(b, step, 1);
    ref.step();
    fused.step();
  }
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(torch::equal(a[i], b[i]));
}

TEST_CASE("the fused Adam's list path on CUDA gives Adam's results", "[trainer][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("CUDA is not available: nothing to compare");
    return;
  }
  using torch::optim::AdamOptions;
  torch::manual_seed(9);
  std::vector<torch::Tensor> ref, list;
  for (const auto& shape : {std::vector<int64_t>{300, 7}, std::vector<int64_t>{5}}) {
    const torch::Tensor init = torch::randn(shape, torch::kCUDA);
    ref.push_back(init.clone().requires_grad_());
    list.push_back(init.clone().requires_grad_());
  }
  const auto options = AdamOptions(1e-2).weight_decay(0.01);
  torch::optim::Adam adam(ref, options);
  imcap::detail::FusedAdam fused(list, options);
  for (int step = 0; step < 10; ++step) {
    for (std::size_t i = 0; i < ref.size(); ++i) {
      const torch::Tensor g = torch::randn(ref[i].sizes(), torch::kCUDA);
      ref[i].mutable_grad() = g.clone();
      list[i].mutable_grad() = g.clone();
    }
    adam.step();
    fused.step();
  }
  // A division may become a multiplication by the reciprocal on a GPU: the last bit may differ.
  for (std::size_t i = 0; i < ref.size(); ++i)
    CHECK(torch::allclose(list[i], ref[i], /*rtol=*/1e-5, /*atol=*/1e-6));
}

TEST_CASE("the fused Adam's list path (GPU parameters) gives Adam's results", "[trainer]") {
  // Parameters the CPU loop does not take (here: not contiguous, as a GPU's are not on the
  // CPU) are updated with one list operation per Adam operation. On the CPU those run Adam's
  // own per-tensor operations, so the results are Adam's bit for bit.
  using torch::optim::AdamOptions;
  auto make_params = [] {
    torch::manual_seed(7);
    return std::vector<torch::Tensor>{torch::randn({6, 4}).t().requires_grad_(),
                                      torch::randn({9, 5}).t().requires_grad_(),
                                      torch::randn({3, 2}).t().requires_grad_()};
  };
  for (const double weight_decay : {0.0, 0.02}) {
    INFO("weight decay " << weight_decay);
    auto ref_params = make_params();
    auto list_params = make_params();
    REQUIRE_FALSE(list_params[0].is_contiguous());
    const auto options = AdamOptions(2e-2).weight_decay(weight_decay);
    torch::optim::Adam ref(ref_params, options);
    imcap::detail::FusedAdam fused(list_params, options);
    for (int step = 0; step < 12; ++step) {
      for (auto* params : {&ref_params, &list_params}) {
        torch::NoGradGuard no_grad;
        for (std::size_t i = 0; i < params->size(); ++i) {
          auto gen = torch::make_generator<torch::CPUGeneratorImpl>(50 * step + i);
          (*params)[i].mutable_grad() = torch::randn((*params)[i].sizes(), gen);
        }
        // The last parameter has no gradient every third step: step counts then differ.
        if (step % 3 == 1) (*params)[2].mutable_grad() = torch::Tensor();
      }
      const auto version = list_params[1]._version();
      ref.step();
      fused.step();
      CHECK(list_params[1]._version() > version);
    }
    for (std::size_t i = 0; i < ref_params.size(); ++i) {
      INFO("parameter " << i);
      CHECK(torch::equal(list_params[i], ref_params[i]));
    }
    CHECK_FALSE(torch::equal(list_params[0], make_params()[0]));
  }
}

TEST_CASE("the fused Adam step on channels_last weights equals Adam's", "[trainer]") {
  // The trainer keeps trainable convolution weights in channels_last on the CPU; their gradients
  // and moments share that layout, and the fused update runs over the raw memory.
  auto make = [] {
    torch::manual_seed(11);
    return torch::randn({8, 3, 5, 5}).contiguous(at::MemoryFormat::ChannelsLast).requires_grad_();
  };
  auto a = make(), b = make();
  REQUIRE_FALSE(a.is_contiguous());
  imcap::detail::FusedAdam fused({a}, torch::optim::AdamOptions(1e-2).weight_decay(0.01));
  torch::optim::Adam plain({b}, torch::optim::AdamOptions(1e-2).weight_decay(0.01));
  for (int step = 0; step < 6; ++step) {
    auto gen = torch::make_generator<torch::CPUGeneratorImpl>(step);
    // One step with a row-major gradient: the layouts differ, and the update must not run over
    // raw memory then.
    const auto g = step == 3
                       ? torch::randn({8, 3, 5, 5}, gen)
                       : torch::randn({8, 3, 5, 5}, gen).contiguous(at::MemoryFormat::ChannelsLast);
    a.mutable_grad() = g.clone(at::MemoryFormat::Preserve);
    b.mutable_grad() = g.clone(at::MemoryFormat::Preserve);
    fused.step();
    plain.step();
  }
  CHECK(((a - b).abs() / (b.abs() + 1)).max().item<double>() < 1e-6);
  CHECK(a.strides() == b.strides());
}
