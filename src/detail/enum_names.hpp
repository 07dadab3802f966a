// The names of the public enums' values: one table per enum, which the library's parse_*() and
// to_string() functions and the CLI's allowed-value lists all read.
#pragma once

#include <fmt/format.h>

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "imcap/data_loader.hpp"
#include "imcap/decoder.hpp"
#include "imcap/encoder.hpp"
#include "imcap/error.hpp"
#include "imcap/model.hpp"
#include "imcap/synthetic.hpp"
#include "imcap/trainer.hpp"
#include "imcap/weights.hpp"

namespace imcap::detail {

template <typename E>
struct EnumEntry {
  E value;
  const char* name;
};

/// Specialised for each enum: `what` (named in errors) and `entries` (every value, in order).
template <typename E>
struct EnumTable;

template <>
struct EnumTable<ResNetArch> {
  static constexpr const char* what = "encoder architecture";
  static constexpr std::array<EnumEntry<ResNetArch>, 5> entries{{
      {ResNetArch::kResNet18, "resnet18"},
      {ResNetArch::kResNet34, "resnet34"},
      {ResNetArch::kResNet50, "resnet50"},
      {ResNetArch::kResNet101, "resnet101"},
      {ResNetArch::kResNet152, "resnet152"},
  }};
};

template <>
struct EnumTable<ImageInject> {
  static constexpr const char* what = "image inject mode";
  static constexpr std::array<EnumEntry<ImageInject>, 3> entries{{
      {ImageInject::kPre, "pre"},
      {ImageInject::kPar, "par"},
      {ImageInject::kInit, "init"},
  }};
};

template <>
struct EnumTable<DecoderKind> {
  static constexpr const char* what = "decoder";
  static constexpr std::array<EnumEntry<DecoderKind>, 2> entries{{
      {DecoderKind::kShowTell, "show-tell"},
      {DecoderKind::kAttention, "attention"},
  }};
};

template <>
struct EnumTable<DecodeWeights> {
  static constexpr const char* what = "decode weights";
  static constexpr std::array<EnumEntry<DecodeWeights>, 3> entries{{
      {DecodeWeights::kFloat32, "float32"},
      {DecodeWeights::kBFloat16, "bfloat16"},
      {DecodeWeights::kInt8, "int8"},
  }};
};

template <>
struct EnumTable<BatchMode> {
  static constexpr const char* what = "batch mode";
  static constexpr std::array<EnumEntry<BatchMode>, 3> entries{{
      {BatchMode::kPadded, "padded"},
      {BatchMode::kSameLength, "same_length"},
      {BatchMode::kImageMajor, "image_major"},
  }};
};

template <>
struct EnumTable<Optimizer> {
  static constexpr const char* what = "optimizer";
  static constexpr std::array<EnumEntry<Optimizer>, 2> entries{{
      {Optimizer::kAdam, "adam"},
      {Optimizer::kSgd, "sgd"},
  }};
};

template <>
struct EnumTable<LrSchedule> {
  static constexpr const char* what = "learning-rate schedule";
  static constexpr std::array<EnumEntry<LrSchedule>, 3> entries{{
      {LrSchedule::kNone, "none"},
      {LrSchedule::kStep, "step"},
      {LrSchedule::kPlateau, "plateau"},
  }};
};

template <>
struct EnumTable<Objective> {
  static constexpr const char* what = "training objective";
  static constexpr std::array<EnumEntry<Objective>, 2> entries{{
      {Objective::kCrossEntropy, "xe"},
      {Objective::kScst, "scst"},
  }};
};

template <>
struct EnumTable<ScstBaseline> {
  static constexpr const char* what = "SCST baseline";
  static constexpr std::array<EnumEntry<ScstBaseline>, 2> entries{{
      {ScstBaseline::kGreedy, "greedy"},
      {ScstBaseline::kMean, "mean"},
  }};
};

template <>
struct EnumTable<SyntheticKind> {
  static constexpr const char* what = "synthetic dataset kind";
  static constexpr std::array<EnumEntry<SyntheticKind>, 5> entries{{
      {SyntheticKind::kShapes, "shapes"},
      {SyntheticKind::kCounts, "counts"},
      {SyntheticKind::kRelations, "relations"},
      {SyntheticKind::kGlyphs, "glyphs"},
      {SyntheticKind::kTextures, "textures"},
  }};
};

template <>
struct EnumTable<WeightsFormat> {
  static constexpr const char* what = "weights format";
  static constexpr std::array<EnumEntry<WeightsFormat>, 3> entries{{
      {WeightsFormat::kTorchZip, "torch-zip"},
      {WeightsFormat::kTorchLegacy, "torch-legacy"},
      {WeightsFormat::kSafetensors, "safetensors"},
  }};
};

/// Every name of E, in the table's order (for the CLI's allowed values).
template <typename E>
std::vector<std::string> enum_names() {
  std::vector<std::string> names;
  for (const auto& e : EnumTable<E>::entries) names.emplace_back(e.name);
  return names;
}

/// The value named `name`. Throws InvalidArgument "unknown <what> '<name>': expected a, b or c".
template <typename E>
E parse_enum(std::string_view name) {
  const auto& entries = EnumTable<E>::entries;
  std::string expected;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (name == entries[i].name) return entries[i].value;
    if (i > 0) expected += i + 1 == entries.size() ? " or " : ", ";
    expected += entries[i].name;
  }
  throw InvalidArgument(
      fmt::format("unknown {} '{}': expected {}", EnumTable<E>::what, name, expected));
}

/// The name of `value` ("unknown" for a value outside the table, e.g. a cast integer).
template <typename E>
const char* enum_name(E value) {
  for (const auto& e : EnumTable<E>::entries)
    if (e.value == value) return e.name;
  return "unknown";
}

}  // namespace imcap::detail
