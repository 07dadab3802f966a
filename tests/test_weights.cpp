// Weight files: the restricted unpickler, torch.save readers (zip and legacy), safetensors,
// load_state_dict, vocab.pkl import and the `imcap weights` CLI. The files come from Debian's
// python3-torch at test time (tests/python/make_weight_files.py) with their expected values.
#include "catch.hpp"

#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "detail/io.hpp"
#include "detail/pickle.hpp"
#include "imcap/error.hpp"
#include "imcap/import.hpp"
#include "imcap/weights.hpp"
#include "support.hpp"

using imcap::TensorMap;
using imcap::test::read_text;
using imcap::test::TempDir;
using imcap::test::write_text;

namespace {

// The generated files, made once per test process.
const TempDir& fixtures(bool with_resnet = false) {
  static TempDir dir;
  static bool made = false;
  static bool made_resnet = false;
  if (!made || (with_resnet && !made_resnet)) {
    std::vector<std::string> args{dir.path()};
    if (with_resnet) args.push_back("--resnet18");
    const auto r = imcap::test::run_python("make_weight_files.py", args);
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    made = true;
    made_resnet = made_resnet || with_resnet;
  }
  return dir;
}

// Compares tensors with what Python saved: names in order, dtype, shape, bytes, and (for
// torch.save files) strides and storage offsets.
void check_expected(const TensorMap& tensors, const std::string& expected, bool layout) {
  const auto index = nlohmann::ordered_json::parse(read_text(expected + ".expected.json"));
  const auto bin = read_text(expected + ".expected.bin");
  REQUIRE(tensors.size() == index.size());
  std::size_t i = 0;
  for (const auto& [name, info] : index.items()) {
    INFO(expected << ": " << name);
    CHECK(tensors.entries()[i++].first == name);
    REQUIRE(tensors.contains(name));
    const auto& t = tensors.at(name);
    CHECK(imcap::dtype_name(t.scalar_type()) == info["dtype"].get<std::string>());
    CHECK(t.sizes().vec() == info["shape"].get<std::vector<std::int64_t>>());
    if (layout) {
      CHECK(t.strides().vec() == info["strides"].get<std::vector<std::int64_t>>());
      CHECK(t.storage_offset() == info["offset"].get<std::int64_t>());
    }
    const auto c = t.contiguous();
    const auto begin = info["range"][0].get<std::size_t>();
    const auto end = info["range"][1].get<std::size_t>();
    REQUIRE(static_cast<std::size_t>(c.numel()) * c.element_size() == end - begin);
    if (end > begin) CHECK(std::memcmp(c.data_ptr(), bin.data() + begin, end - begin) == 0);
  }
}

bool identical(const TensorMap& a, const TensorMap& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto& [na, ta] = a.entries()[i];
    const auto& [nb, tb] = b.entries()[i];
    if (na != nb || ta.scalar_type() != tb.scalar_type() || ta.sizes() != tb.sizes() ||
        !torch::equal(ta, tb))
      return false;
  }
  return true;
}

std::string file_bytes(const std::string& path) { return read_text(path); }

struct NetImpl : torch::nn::Module {
  explicit NetImpl(bool with_fc = true) {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3)));
    bn = register_module("bn", torch::nn::BatchNorm2d(4));
    if (with_fc) fc = register_module("fc", torch::nn::Linear(4, 2));
  }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(Net);

// A safetensors file from a header and a data section.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out;
  for (int i = 0; i < 8; ++i) out += static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  return out + header + data;
}

template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const imcap::Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST_CASE("torch.save zip files of an OrderedDict state dict load exactly", "[weights]") {
  const auto& dir = fixtures();
  check_expected(imcap::load_torch_file(dir.file("net.pt")), dir.file("net.pt"), true);
  for (const char* name : {"net_p2.pt", "net_p4.pt", "net_p5.pt"}) {
    INFO(name);
    check_expected(imcap::load_torch_file(dir.file(name)), dir.file("net.pt"), true);
  }
  CHECK(imcap::detect_weights_format(dir.file("net.pt")) == imcap::WeightsFormat::kTorchZip);
  // torch.save with the legacy (non-zip) serialization, as old torchvision files are.
  CHECK(imcap::detect_weights_format(dir.file("net_legacy.pt")) ==
        imcap::WeightsFormat::kTorchLegacy);
  check_expected(imcap::load_weights(dir.file("net_legacy.pt")), dir.file("net.pt"), true);
}

TEST_CASE("plain dicts, views, offsets and shared storages keep their layout", "[weights]") {
  const auto& dir = fixtures();
  check_expected(imcap::load_weights(dir.file("plain.pt")), dir.file("plain.pt"), true);
  for (const char* name : {"views.pt", "views_legacy.pt"}) {
    INFO(name);
    const auto views = imcap::load_weights(dir.file(name));
    check_expected(views, dir.file("views.pt"), true);
    const auto* base = static_cast<const char*>(views.at("base").data_ptr());
    CHECK(views.at("transposed").data_ptr() == base);
    CHECK(static_cast<const char*>(views.at("flat_window").data_ptr()) == base + 5 * 4);
    CHECK(static_cast<const char*>(views.at("slice").data_ptr()) == base + (6 + 2) * 4);
    CHECK(views.at("empty").sizes().vec() == std::vector<std::int64_t>{0, 6});
  }
}

TEST_CASE("every dtype loads bit-exactly from zip and legacy files", "[weights]") {
  const auto& dir = fixtures();
  check_expected(imcap::load_weights(dir.file("dtypes.pt")), dir.file("dtypes.pt"), true);
  check_expected(imcap::load_weights(dir.file("dtypes_legacy.pt")), dir.file("dtypes.pt"), true);
}

TEST_CASE("a checkpoint dict nesting the state dict is found", "[weights]") {
  const auto& dir = fixtures();
  check_expected(imcap::load_weights(dir.file("checkpoint.pt")), dir.file("net.pt"), true);
  imcap::TorchLoadOptions options;
  options.state_dict_key = "state_dict";
  check_expected(imcap::load_weights(dir.file("checkpoint.pt"), options), dir.file("net.pt"), true);
  options.state_dict_key = "optimizer";
  CHECK_THROWS_WITH(imcap::load_weights(dir.file("checkpoint.pt"), options),
                    Catch::Contains("'optimizer' is not a dict of tensors"));
  options.state_dict_key = "weights";
  CHECK_THROWS_WITH(imcap::load_weights(dir.file("checkpoint.pt"), options),
                    Catch::Contains("no key 'weights'") && Catch::Contains("epoch"));
}

TEST_CASE("safetensors: a file written by hand per the spec, and round trips", "[weights]") {
  const auto& dir = fixtures();
  std::map<std::string, std::string> metadata;
  const auto hand = imcap::load_safetensors(dir.file("hand.safetensors"), &metadata);
  CHECK(metadata ==
        std::map<std::string, std::string>{{"format", "pt"}, {"source", "make_weight_files.py"}});
  // Ordered by data offset, which is how Python laid the data out.
  check_expected(hand, dir.file("hand.safetensors"), false);
  CHECK(hand.entries()[0].first == "ids");

  // Every dtype safetensors holds, plus non-contiguous views (written contiguous).
  TensorMap tensors;
  for (const auto& [name, t] : imcap::load_weights(dir.file("dtypes.pt"))) {
    if (t.scalar_type() != torch::kComplexFloat) tensors.insert(name, t);
  }
  for (const auto& [name, t] : imcap::load_weights(dir.file("views.pt")))
    tensors.insert("views." + name, t);
  const std::string out = dir.file("round.safetensors");
  imcap::save_safetensors(out, tensors, {{"note", "round trip"}});
  const auto bytes = file_bytes(out);
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  CHECK((8 + header_len) % 8 == 0);
  std::map<std::string, std::string> back_metadata;
  const auto back = imcap::load_weights(out);
  CHECK(identical(back, tensors));
  imcap::load_safetensors(out, &back_metadata);
  CHECK(back_metadata.at("note") == "round trip");
  CHECK(back.at("views.transposed").is_contiguous());

  TensorMap complex;
  complex.insert("c", torch::zeros({2}, torch::kComplexFloat));
  CHECK_THROWS_AS(imcap::serialize_safetensors(complex), imcap::InvalidArgument);
}

TEST_CASE("safetensors headers are validated", "[weights]") {
  const std::string data(16, '\0');
  const auto parse = [](const std::string& bytes) { return imcap::parse_safetensors(bytes, "t"); };
  const auto ok = safetensors_bytes(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})",
      data);
  CHECK(parse(ok).size() == 2);

  std::string past = ok;
  past[0] = static_cast<char>(0xF0);
  CHECK_THROWS_WITH(parse(past), Catch::Contains("runs past the end"));
  std::string huge = ok;
  huge[7] = static_cast<char>(0x7F);
  CHECK_THROWS_AS(parse(huge), imcap::FormatError);
  CHECK_THROWS_AS(parse("abc"), imcap::FormatError);
  CHECK_THROWS_WITH(parse(safetensors_bytes("[1, 2]", "")), Catch::Contains("'{'"));
  CHECK_THROWS_WITH(parse(safetensors_bytes("{\"a\": ", "")), Catch::Contains("not valid JSON"));

  const auto with = [&](const std::string& a, const std::string& b, const std::string& d) {
    return parse(safetensors_bytes("{\"a\":" + a + ",\"b\":" + b + "}", d));
  };
  const std::string b_ok = R"({"dtype":"I64","shape":[1],"data_offsets":[8,16]})";
  CHECK_THROWS_WITH(with(R"({"dtype":"F32","shape":[2],"data_offsets":[0,12]})", b_ok, data),
                    Catch::Contains("'a'") && Catch::Contains("need 8 bytes"));
  CHECK_THROWS_WITH(with(R"({"dtype":"F32","shape":[3],"data_offsets":[0,12]})", b_ok, data),
                    Catch::Contains("overlap"));
  CHECK_THROWS_WITH(with(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})", b_ok, data),
                    Catch::Contains("gap"));
  CHECK_THROWS_WITH(with(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})",
                         R"({"dtype":"I64","shape":[2],"data_offsets":[8,24]})", data),
                    Catch::Contains("data section holds 16"));
  CHECK_THROWS_WITH(with(R"({"dtype":"Q7","shape":[2],"data_offsets":[0,8]})", b_ok, data),
                    Catch::Contains("unsupported dtype 'Q7'"));
  CHECK_THROWS_WITH(with(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})", b_ok, data),
                    Catch::Contains("non-negative"));
  CHECK_THROWS_WITH(with(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})", b_ok, data),
                    Catch::Contains("end before"));
  CHECK_THROWS_WITH(
      with(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})", b_ok, data),
      Catch::Contains("overflow"));
  CHECK_THROWS_WITH(with(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1})", b_ok, data),
                    Catch::Contains("unknown header field 'x'"));
  CHECK_THROWS_WITH(with(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})",
                         R"({"dtype":"I64","shape":[1],"data_offsets":[8,16]},"a":{})", data),
                    Catch::Contains("'a' twice"));
  CHECK_THROWS_WITH(parse(safetensors_bytes(R"({"__metadata__":{"k":1}})", "")),
                    Catch::Contains("__metadata__"));
}

TEST_CASE("safetensors headers with many entries parse in linear time", "[weights][safetensors]") {
  // 40,000 one-byte tensors (2.9 MB of header): under a second. The duplicate-key check was
  // quadratic in the number of entries and took a minute here (duplicates: the test above).
  constexpr int kEntries = 40'000;
  std::string header = "{";
  for (int i = 0; i < kEntries; ++i)
    header += fmt::format("{}\"t{}\":{{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[{},{}]}}",
                          i ? "," : "", i, i, i + 1);
  const auto many = safetensors_bytes(header + "}", std::string(kEntries, '\x07'));
  const auto tensors = imcap::parse_safetensors(many, "many");
  REQUIRE(tensors.size() == kEntries);
  CHECK(tensors.at("t39999").item<std::uint8_t>() == 7);
}

TEST_CASE("truncated and corrupted weight files fail cleanly", "[weights]") {
  const auto& dir = fixtures();
  TempDir tmp;
  for (const char* name : {"net.pt", "net_p2.pt", "net_legacy.pt", "dtypes_legacy.pt",
                           "hand.safetensors", "vocab.pkl", "checkpoint.pt"}) {
    const auto bytes = file_bytes(dir.file(name));
    const bool is_vocab = std::string(name) == "vocab.pkl";
    for (int k = 0; k < 16; ++k) {
      INFO(name << " truncated to " << k << "/16");
      const std::string cut = tmp.file("cut");
      write_text(cut, bytes.substr(0, bytes.size() * k / 16));
      if (is_vocab) {
        CHECK_THROWS_AS(imcap::import_vocab_pickle(cut), imcap::FormatError);
      } else {
        CHECK_THROWS_AS(imcap::load_weights(cut), imcap::Error);
      }
    }
  }
  // Random byte changes: either a clean imcap::Error or a successful load, never a crash or a
  // foreign exception. (The zip format's CRC-32 catches changes inside entries.)
  std::mt19937 rng(42);
  for (const char* name : {"net.pt", "net_legacy.pt", "views_legacy.pt", "hand.safetensors",
                           "vocab.pkl", "vocab_tutorial.pkl"}) {
    const auto bytes = file_bytes(dir.file(name));
    const bool is_vocab = std::string(name).find("vocab") == 0;
    int errors = 0;
    for (int trial = 0; trial < 300; ++trial) {
      std::string mutated = bytes;
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int f = 0; f < flips; ++f)
        mutated[rng() % mutated.size()] = static_cast<char>(rng() & 0xFF);
      const std::string path = tmp.file("mutated");
      write_text(path, mutated);
      try {
        if (is_vocab) {
          imcap::import_vocab_pickle(path);
        } else {
          imcap::load_weights(path);
        }
      } catch (const imcap::Error&) {
        ++errors;
      }
    }
    INFO(name);
    CHECK(errors > 0);
  }
  write_text(tmp.file("magic"), "\x80\x02\x8a\x0a" + std::string(10, 'x') + "rest");
  CHECK_THROWS_AS(imcap::load_weights(tmp.file("magic")), imcap::FormatError);
  auto legacy = file_bytes(dir.file("net_legacy.pt"));
  legacy[5] ^= 0x01;  // inside the magic number
  write_text(tmp.file("magic2"), legacy);
  CHECK_THROWS_AS(imcap::load_weights(tmp.file("magic2")), imcap::FormatError);
  CHECK_THROWS_AS(imcap::load_weights(tmp.file("does-not-exist")), imcap::IoError);
}

TEST_CASE("malicious pickles are refused with the global named, and nothing runs", "[weights]") {
  const auto& dir = fixtures();
  imcap::detail::UnpickleOptions objects;
  objects.allow_objects = true;
  for (const char* name : {"evil_p2.pkl", "evil_p4.pkl"}) {
    INFO(name);
    const auto bytes = file_bytes(dir.file(name));
    CHECK_THROWS_WITH(imcap::detail::unpickle(bytes, objects, name),
                      Catch::Contains("posix.system"));
    CHECK_THROWS_AS(imcap::detail::unpickle(bytes, {}, name), imcap::SecurityError);
    CHECK_THROWS_AS(imcap::import_vocab_pickle(dir.file(name)), imcap::SecurityError);
  }
  CHECK_THROWS_WITH(imcap::detail::unpickle(file_bytes(dir.file("evil_eval.pkl")), objects),
                    Catch::Contains("builtins.eval"));
  CHECK_THROWS_AS(imcap::load_weights(dir.file("evil.pt")), imcap::SecurityError);
  CHECK_THROWS_WITH(imcap::load_weights(dir.file("evil.pt")), Catch::Contains("posix.system"));
  CHECK_FALSE(imcap::detail::path_exists(dir.file("PWNED")));
  // A class outside the allowlist may be recorded (vocab.pkl) but never called.
  const std::string call_class(
      "\x80\x02"
      "cvocabulary\nVocabulary\n)R.");
  CHECK_THROWS_WITH(
      imcap::detail::unpickle(call_class, objects),
      Catch::Contains("vocabulary.Vocabulary") && Catch::Contains("may not be called"));
  CHECK_THROWS_AS(imcap::detail::unpickle(call_class), imcap::SecurityError);
  // Whole pickled modules (allow_torch_modules): their classes are recorded, never called, and
  // the rest of torch and the dangerous modules stay refused.
  imcap::detail::UnpickleOptions modules = objects;
  modules.allow_torch_modules = true;
  const auto linear =
      imcap::detail::unpickle(std::string("\x80\x02"
                                          "ctorch.nn.modules.linear\nLinear\n)\x81."),
                              modules);
  CHECK(linear->type_name() == "torch.nn.modules.linear.Linear");
  CHECK_THROWS_WITH(
      imcap::detail::unpickle(std::string("\x80\x02"
                                          "ctorch.nn.modules.linear\nLinear\n)R."),
                              modules),
      Catch::Contains("torch.nn.modules.linear.Linear") && Catch::Contains("may not be called"));
  for (const char* global : {"ctorch\nload\n", "ctorch.hub\nload\n", "cos\nsystem\n",
                             "ctorch.nn.modules.module\n_global_hook\n"}) {
    INFO(global);
    CHECK_THROWS_AS(
        imcap::detail::unpickle(std::string("\x80\x02") + global + "(S'x'\ntR.", modules),
        imcap::SecurityError);
  }
  CHECK_THROWS_AS(imcap::detail::unpickle(file_bytes(dir.file("evil_p2.pkl")), modules),
                  imcap::SecurityError);
}

TEST_CASE("the unpickler reads plain values and bounds hostile input", "[weights]") {
  using Kind = imcap::detail::PickleValue::Kind;
  // Protocol 0 text opcodes: (dp0\nS'k'\np1\n(lp2\nI1\naF2.5\naVcaf\xe9\np3\nas.
  const auto v = imcap::detail::unpickle(
      std::string("(dp0\nS'k'\np1\n(lp2\nI1\naF2.5\naVcaf\\u00e9\np3\naI01\nas."));
  REQUIRE(v->kind == Kind::kDict);
  const auto* list = v->get("k");
  REQUIRE(list != nullptr);
  REQUIRE(list->items.size() == 4);
  CHECK(list->items[0]->integer == 1);
  CHECK(list->items[1]->number == 2.5);
  CHECK(list->items[2]->text == "caf\xc3\xa9");
  CHECK(list->items[3]->kind == Kind::kBool);
  // LONG1 beyond 64 bits, negative LONG1, BININT, bytes, tuple keys.
  const auto big = imcap::detail::unpickle(
      std::string("\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.", 14));
  CHECK(big->kind == Kind::kBigInt);
  CHECK(imcap::detail::unpickle(std::string("\x80\x02\x8a\x01\xff.", 6))->integer == -1);
  CHECK(imcap::detail::unpickle(std::string("\x80\x03J\xfe\xff\xff\xff.", 8))->integer == -2);
  CHECK(imcap::detail::unpickle(std::string("\x80\x03"
                                            "C\x03"
                                            "abc.",
                                            8))
            ->text == "abc");

  // A list that contains itself, and nesting beyond the limit, are refused.
  CHECK_THROWS_WITH(imcap::detail::unpickle(std::string("\x80\x02]q\x00h\x00"
                                                        "a.",
                                                        9)),
                    Catch::Contains("contains itself"));
  std::string deep("\x80\x02", 2);
  for (int i = 0; i < 500; ++i) deep += "]";
  for (int i = 0; i < 499; ++i) deep += "a";
  deep += ".";
  CHECK_THROWS_WITH(imcap::detail::unpickle(deep), Catch::Contains("nesting deeper"));
  // Lengths beyond the data, undefined memo keys, unknown opcodes, no STOP, big protocol.
  CHECK_THROWS_WITH(
      imcap::detail::unpickle(std::string("\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f", 11)),
      Catch::Contains("truncated"));
  CHECK_THROWS_WITH(imcap::detail::unpickle(std::string("\x80\x02h\x05.", 5)),
                    Catch::Contains("memo key 5"));
  CHECK_THROWS_WITH(imcap::detail::unpickle(std::string("\x80\x02\xff.", 4)),
                    Catch::Contains("unknown opcode"));
  CHECK_THROWS_WITH(imcap::detail::unpickle(std::string("\x80\x02N", 3)),
                    Catch::Contains("no STOP"));
  CHECK_THROWS_WITH(imcap::detail::unpickle(std::string("\x80\x09N.", 4)),
                    Catch::Contains("protocol 9"));
  CHECK_THROWS_WITH(imcap::detail::unpickle(std::string("\x80\x02"
                                                        "a.",
                                                        4)),
                    Catch::Contains("underflow"));
  CHECK_THROWS_AS(imcap::detail::unpickle(std::string("\x80\x02"
                                                      "cos\nsystem\n.",
                                                      14)),
                  imcap::SecurityError);
  // Strings that are not UTF-8 (Python's decoder refuses them too): BINUNICODE with FF FE, an
  // encoded surrogate in SHORT_BINUNICODE, a Python 2 STRING with a lone continuation byte.
  CHECK_THROWS_WITH(
      imcap::detail::unpickle(std::string("\x80\x02X\x02\x00\x00\x00\xff\xfe.", 10), {}, "bad.pkl"),
      Catch::StartsWith("bad.pkl: pickle byte 2: ") &&
          Catch::Contains("ill-formed UTF-8 at byte 0"));
  CHECK_THROWS_WITH(imcap::detail::unpickle(std::string("\x80\x04\x8c\x03\xed\xa0\x80.", 8)),
                    Catch::Contains("ill-formed UTF-8"));
  CHECK_THROWS_WITH(imcap::detail::unpickle(std::string("U\x02"
                                                        "a\x80.",
                                                        5)),
                    Catch::Contains("ill-formed UTF-8 at byte 1"));
}

TEST_CASE("vocab.pkl imports keep the notebook's ids", "[weights]") {
  const auto& dir = fixtures();
  const auto ids = nlohmann::json::parse(read_text(dir.file("vocab_ids.json")));
  for (const char* kind : {"notebook", "tutorial"}) {
    INFO(kind);
    const auto vocab = imcap::import_vocab_pickle(
        dir.file(std::string(kind) == "notebook" ? "vocab.pkl" : "vocab_tutorial.pkl"));
    const auto& expected = ids[kind];
    REQUIRE(vocab.size() == expected.size());
    for (const auto& [id, word] : expected.items())
      CHECK(vocab.token(std::stoll(id)) == word.get<std::string>());
  }
  const auto notebook = imcap::import_vocab_pickle(dir.file("vocab.pkl"));
  CHECK(notebook.start_id() == 0);
  CHECK(notebook.end_id() == 1);
  CHECK(notebook.unk_id() == 2);
  CHECK_FALSE(notebook.pad_id().has_value());
  CHECK(notebook.id("caf\xc3\xa9") == 7);
  const auto tutorial = imcap::import_vocab_pickle(dir.file("vocab_tutorial.pkl"));
  CHECK(tutorial.pad_id() == 0);
  CHECK(tutorial.unk_id() == 3);
  CHECK_THROWS_WITH(imcap::import_vocab_pickle(dir.file("vocab_inconsistent.pkl")),
                    Catch::Contains("word2idx['man'] = 5"));
  CHECK_THROWS_AS(imcap::import_vocab_pickle(dir.file("net.pt")), imcap::FormatError);
  // A word that is not UTF-8 is refused at load, naming the file, not when the vocabulary is
  // written into a model file's JSON metadata after training.
  TempDir tmp;
  write_text(
      tmp.file("bad.pkl"),
      std::string("\x80\x02}(X\x08\x00\x00\x00idx2word}(K\x00X\x02\x00\x00\x00\xff\xfeuu.", 31));
  CHECK_THROWS_WITH(imcap::import_vocab_pickle(tmp.file("bad.pkl")),
                    Catch::StartsWith(tmp.file("bad.pkl")) && Catch::Contains("ill-formed UTF-8"));
}

TEST_CASE("load_state_dict copies parameters and buffers and names every mismatch", "[weights]") {
  const auto& dir = fixtures();
  const auto tensors = imcap::load_weights(dir.file("net.pt"));
  Net net;
  const auto report = imcap::load_state_dict(*net, tensors);
  CHECK(report.loaded.size() == 9);
  CHECK(torch::equal(net->conv->weight, tensors.at("conv.weight")));
  CHECK(torch::equal(net->bn->running_var, tensors.at("bn.running_var")));
  CHECK(net->bn->num_batches_tracked.item<std::int64_t>() == 7);
  CHECK(torch::equal(net->fc->bias, tensors.at("fc.bias")));

  // Conversion: a double module takes float weights.
  Net dbl;
  dbl->to(torch::kDouble);
  imcap::load_state_dict(*dbl, tensors);
  CHECK(torch::equal(dbl->conv->weight, tensors.at("conv.weight").to(torch::kDouble)));

  // Strict errors name the missing, unexpected and mismatched keys; nothing is copied.
  TensorMap bad;
  for (const auto& [name, t] : tensors) {
    if (name == "bn.running_mean") continue;
    bad.insert(name == "fc.weight" ? "fc.weights" : name,
               name == "conv.bias" ? torch::zeros({5}) : t);
  }
  Net fresh;
  const auto before = fresh->conv->weight.clone();
  const auto message = error_of([&] { imcap::load_state_dict(*fresh, bad); });
  CHECK_THAT(message, Catch::Contains("missing key(s): fc.weight, bn.running_mean") &&
                          Catch::Contains("unexpected key(s): fc.weights") &&
                          Catch::Contains("conv.bias: file [5] vs module [4]"));
  CHECK(torch::equal(fresh->conv->weight, before));

  imcap::LoadOptions lenient;
  lenient.strict = false;
  const auto partial = imcap::load_state_dict(*fresh, bad, lenient);
  CHECK(partial.missing == std::vector<std::string>{"fc.weight", "bn.running_mean"});
  CHECK(partial.unexpected == std::vector<std::string>{"fc.weights"});
  CHECK(partial.mismatched.size() == 1);
  CHECK(torch::equal(fresh->conv->weight, tensors.at("conv.weight")));

  // Remapping: strip "module.", regex renames in order, add a prefix, ignore fc.*.
  const auto prefixed = imcap::load_weights(dir.file("net_prefixed.pt"));
  CHECK_THROWS_AS(imcap::load_state_dict(*fresh, prefixed), imcap::InvalidArgument);
  imcap::LoadOptions strip;
  strip.strip_prefix = "module.";
  CHECK(imcap::load_state_dict(*fresh, prefixed, strip).loaded.size() == 9);
  imcap::LoadOptions rename;
  rename.rename = {{"^module\\.", "x."}, {"^x\\.", ""}};
  CHECK(imcap::load_state_dict(*fresh, prefixed, rename).loaded.size() == 9);
  CHECK(imcap::remap_key("module.fc.bias", rename) == "fc.bias");

  Net no_fc(/*with_fc=*/false);
  // The tensors came from a file: the error names it.
  CHECK_THROWS_WITH(imcap::load_state_dict(*no_fc, tensors),
                    Catch::StartsWith(dir.file("net.pt") + ": load_state_dict: ") &&
                        Catch::Contains("unexpected key(s): fc.weight, fc.bias"));
  imcap::LoadOptions ignore_fc;
  ignore_fc.ignore = {"fc\\..*"};
  const auto r = imcap::load_state_dict(*no_fc, tensors, ignore_fc);
  CHECK(r.ignored == std::vector<std::string>{"fc.weight", "fc.bias"});
  CHECK(r.loaded.size() == 7);
  CHECK(torch::equal(no_fc->bn->running_mean, tensors.at("bn.running_mean")));

  imcap::LoadOptions broken;
  broken.ignore = {"("};
  CHECK_THROWS_AS(imcap::load_state_dict(*no_fc, tensors, broken), imcap::InvalidArgument);
}

TEST_CASE("imcap weights inspect and convert", "[weights][cli]") {
  const auto& dir = fixtures();
  auto r = imcap::test::run_cli({"weights", "inspect", dir.file("net.pt")});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("torch-zip") && Catch::Contains("bn.num_batches_tracked") &&
                        Catch::Contains("139 values") && Catch::Contains("[4, 3, 3, 3]") &&
                        Catch::Contains("9 tensors"));
  r = imcap::test::run_cli({"weights", "inspect", "--json", dir.file("net_legacy.pt")});
  REQUIRE(r.exit_code == 0);
  const auto json = nlohmann::json::parse(r.out);
  CHECK(json["format"] == "torch-legacy");
  CHECK(json["total_tensors"] == 9);
  CHECK(json["total_parameters"] == 4 * 3 * 3 * 3 + 4 + 4 * 4 + 1 + 2 * 4 + 2);
  CHECK(json["tensors"][0]["name"] == "conv.weight");
  CHECK(json["tensors"][0]["dtype"] == "float32");

  TempDir tmp;
  r = imcap::test::run_cli({"weights", "convert", dir.file("checkpoint.pt"), "--out",
                            tmp.file("net.safetensors"), "--metadata", "arch=net"});
  REQUIRE(r.exit_code == 0);
  std::map<std::string, std::string> metadata;
  CHECK(identical(imcap::load_safetensors(tmp.file("net.safetensors"), &metadata),
                  imcap::load_weights(dir.file("net.pt"))));
  CHECK(metadata.at("arch") == "net");

  r = imcap::test::run_cli({"weights", "inspect", dir.file("evil.pt")});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("imcap: error:") && Catch::Contains("posix.system"));
  r = imcap::test::run_cli({"weights", "inspect"});
  CHECK(r.exit_code == 2);
}

TEST_CASE("torchvision resnet18 files load in zip and legacy formats", "[weights][slow]") {
  const auto& dir = fixtures(/*with_resnet=*/true);
  const auto zip = imcap::load_weights(dir.file("resnet18.pth"));
  CHECK(zip.size() == 122);
  check_expected(zip, dir.file("resnet18.pth"), true);
  check_expected(imcap::load_weights(dir.file("resnet18_legacy.pth")), dir.file("resnet18.pth"),
                 true);
  CHECK(zip.total_numel() == 11689512 + 9600 + 20);  // parameters + running stats + counters
}
