// The restricted unpickler (detail/pickle.hpp). It interprets the pickle opcodes on a value
// stack and never calls anything: the few allowlisted globals are emulated here.
#include "detail/pickle.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "detail/io.hpp"
#include "detail/utf8.hpp"
#include "imcap/error.hpp"

namespace imcap::detail {

namespace {

using Kind = PickleValue::Kind;

constexpr int kHighestProtocol = 5;

// Globals a torch state dict (or a plain container) needs. Each is emulated by the unpickler.
constexpr std::array<std::string_view, 10> kCallableGlobals = {
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "builtins.bytes",
    "_codecs.encode",
};

// Globals that are only referenced: storage classes (inside persistent ids) and the arguments of
// copyreg._reconstructor, which call() handles itself.
constexpr std::array<std::string_view, 15> kReferenceGlobals = {
    "torch.FloatStorage",    "torch.DoubleStorage",       "torch.HalfStorage",
    "torch.BFloat16Storage", "torch.LongStorage",         "torch.IntStorage",
    "torch.ShortStorage",    "torch.CharStorage",         "torch.ByteStorage",
    "torch.BoolStorage",     "torch.ComplexFloatStorage", "torch.ComplexDoubleStorage",
    "torch.UntypedStorage",  "builtins.object",           "copyreg._reconstructor",
};

// Modules whose globals are refused even where objects of unknown classes are recorded: they
// hold the functions a malicious pickle would call.
constexpr std::array<std::string_view, 40> kBlockedModules = {
    "os",         "posix",      "nt",
    "subprocess", "sys",        "builtins",
    "shutil",     "socket",     "importlib",
    "runpy",      "pickle",     "_pickle",
    "marshal",    "ctypes",     "code",
    "codeop",     "pty",        "commands",
    "platform",   "webbrowser", "multiprocessing",
    "asyncio",    "types",      "functools",
    "operator",   "inspect",    "io",
    "_io",        "tempfile",   "pathlib",
    "glob",       "signal",     "threading",
    "_thread",    "torch",      "numpy",
    "copyreg",    "_codecs",    "collections",
    "pydoc",
};

template <typename List>
bool contains(const List& list, std::string_view name) {
  return std::find(list.begin(), list.end(), name) != list.end();
}

std::string normalize_module(std::string module) {
  // Protocols < 3 write Python 2 names (pickle's fix_imports).
  if (module == "__builtin__") return "builtins";
  if (module == "copy_reg") return "copyreg";
  return module;
}

std::string key_of(const PickleValue& v, int depth = 0);

class Unpickler {
 public:
  Unpickler(std::string_view data, const UnpickleOptions& options, const std::string& name)
      : data_(data), options_(options), name_(name) {}

  PickleValuePtr run(std::size_t* consumed) {
    while (true) {
      if (pos_ >= data_.size()) fail("truncated pickle: no STOP opcode");
      op_pos_ = pos_;
      const auto op = static_cast<unsigned char>(data_[pos_++]);
      if (op == '.') {
        if (stack_.size() != 1 || !marks_.empty())
          fail(fmt::format("STOP with {} values and {} marks on the stack", stack_.size(),
                           marks_.size()));
        if (consumed) *consumed = pos_;
        return stack_.back();
      }
      step(op);
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(fmt::format("{}: pickle byte {}: {}", name_, op_pos_, what));
  }
  [[noreturn]] void refuse(const std::string& global, const std::string& why) const {
    throw SecurityError(
        fmt::format("{}: pickle byte {}: global '{}' {}", name_, op_pos_, global, why));
  }

  std::string_view take(std::uint64_t n) {
    if (n > data_.size() - pos_)
      fail(fmt::format("truncated: needs {} bytes, {} left", n, data_.size() - pos_));
    auto s = data_.substr(pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  std::uint64_t uint_le(int n) {
    const auto s = take(static_cast<std::uint64_t>(n));
    std::uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[i]);
    return v;
  }
  std::string_view line() {
    const auto end = data_.find('\n', pos_);
    if (end == std::string_view::npos) fail("truncated: text argument without newline");
    auto s = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }

  static PickleValuePtr make(Kind kind) {
    auto v = std::make_shared<PickleValue>();
    v->kind = kind;
    return v;
  }
  PickleValuePtr make_int(std::int64_t i) {
    auto v = make(Kind::kInt);
    v->integer = i;
    return v;
  }
  PickleValuePtr make_text(Kind kind, std::string_view s) {
    // Python decodes these opcodes' bytes (strictly, or as ASCII for Python 2 strings); text that
    // is not UTF-8 is refused here, where the file and offset are known.
    if (kind == Kind::kString) {
      if (const auto problem = detail::utf8_problem(s); !problem.empty())
        fail("a string is not text: " + problem);
    }
    auto v = make(kind);
    v->text.assign(s.data(), s.size());
    return v;
  }

  void push(PickleValuePtr v) { stack_.push_back(std::move(v)); }
  PickleValuePtr pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back()))
      fail("stack underflow");
    auto v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  PickleValuePtr& top() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back()))
      fail("stack underflow");
    return stack_.back();
  }
  std::vector<PickleValuePtr> pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PickleValuePtr> items(std::make_move_iterator(stack_.begin() + m),
                                      std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return items;
  }

  // Puts child inside parent. A value inside another may not change any more, so containers
  // are built bottom-up: no cycles, and the depth computed here stays exact.
  void adopt(PickleValue& parent, const PickleValuePtr& child) {
    if (parent.frozen)
      fail(
          fmt::format("a {} is modified after being stored in another value "
                      "(recursive structures are not supported)",
                      parent.type_name()));
    if (child.get() == &parent) fail("a container contains itself");
    child->frozen = true;
    parent.depth = std::max(parent.depth, child->depth + 1);
    if (parent.depth > options_.max_depth)
      fail(fmt::format("nesting deeper than {} levels", options_.max_depth));
  }
  PickleValuePtr make_tuple(std::vector<PickleValuePtr> items) {
    auto t = make(Kind::kTuple);
    for (const auto& i : items) adopt(*t, i);
    t->items = std::move(items);
    return t;
  }
  void append(PickleValue& list, const PickleValuePtr& item) {
    if (list.kind != Kind::kList && list.kind != Kind::kSet)
      fail(fmt::format("APPEND to a {}", list.type_name()));
    adopt(list, item);
    list.items.push_back(item);
  }
  void set_item(PickleValue& dict, const PickleValuePtr& key, const PickleValuePtr& value) {
    if (dict.kind != Kind::kDict) fail(fmt::format("SETITEM on a {}", dict.type_name()));
    adopt(dict, key);
    adopt(dict, value);
    std::string k;
    try {
      k = key_of(*key);
    } catch (const FormatError& e) {
      fail(e.what());
    }
    const auto [it, inserted] = dict.key_index.emplace(std::move(k), dict.entries.size());
    if (inserted) {
      dict.entries.emplace_back(key, value);
    } else {
      dict.entries[it->second].second = value;
    }
  }
  void set_attributes(PickleValue& target, const PickleValue& state) {
    for (const auto& [k, v] : state.entries) {
      if (k->kind != Kind::kString) fail("attribute name is not a string");
      const auto [it, inserted] = target.attribute_index.emplace(k->text, target.attributes.size());
      if (inserted) {
        target.attributes.emplace_back(k, v);
      } else {
        target.attributes[it->second].second = v;
      }
    }
  }

  void memo_put(std::uint64_t index) {
    if (stack_.empty()) fail("PUT on an empty stack");
    if (memo_.size() >= options_.max_memo && memo_.find(index) == memo_.end())
      fail(fmt::format("more than {} memo entries", options_.max_memo));
    memo_[index] = stack_.back();
  }
  void memo_get(std::uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) fail(fmt::format("memo key {} is not defined", index));
    push(it->second);
  }

  PickleValuePtr global(std::string module, std::string name) {
    module = normalize_module(std::move(module));
    if (module.empty() || name.empty()) fail("empty global name");
    std::string qualified = module + "." + name;
    if (qualified == "builtins.unicode") qualified = "builtins.str";
    // Whole pickled modules: their classes are recorded, never called (call() refuses them).
    if (options_.allow_objects && options_.allow_torch_modules && name.find('_') != 0 &&
        (module.rfind("torch.nn.modules.", 0) == 0 || module.rfind("torch.optim.", 0) == 0 ||
         qualified == "collections.defaultdict" || qualified == "builtins.dict" ||
         qualified == "builtins.list"))
      return make_text(Kind::kGlobal, qualified);
    if (!is_allowed_pickle_global(qualified)) {
      const std::string top = module.substr(0, module.find('.'));
      if (!options_.allow_objects)
        refuse(qualified, "is not allowed (only the globals of torch state dicts are)");
      if (contains(kBlockedModules, top) || name.find("__") == 0)
        refuse(qualified, "is not allowed (its module can run code)");
    }
    return make_text(Kind::kGlobal, qualified);
  }

  PickleValuePtr new_object(const PickleValuePtr& cls, std::vector<PickleValuePtr> args) {
    if (cls->kind != Kind::kGlobal) fail(fmt::format("NEWOBJ of a {}", cls->type_name()));
    if (cls->text == "collections.OrderedDict") return make(Kind::kDict);
    if (cls->text == "builtins.set") return make(Kind::kSet);
    if (is_allowed_pickle_global(cls->text))
      fail(fmt::format("'{}' cannot be instantiated", cls->text));
    auto obj = make_text(Kind::kObject, cls->text);
    for (const auto& a : args) adopt(*obj, a);
    obj->items = std::move(args);
    return obj;
  }

  static std::string latin1_encode_check(const std::string& s, bool& ok) {
    std::vector<std::uint32_t> cps;
    ok = detail::utf8_decode(s, cps);
    std::string out;
    for (auto cp : cps) {
      if (cp > 0xFF) ok = false;
      out += static_cast<char>(cp);
    }
    return out;
  }

  const std::vector<PickleValuePtr>& tuple_args(const PickleValuePtr& args, const std::string& fn,
                                                std::size_t min_n, std::size_t max_n) {
    if (args->kind != Kind::kTuple) fail(fmt::format("arguments of {} are not a tuple", fn));
    if (args->items.size() < min_n || args->items.size() > max_n)
      fail(
          fmt::format("{} takes {} to {} arguments, got {}", fn, min_n, max_n, args->items.size()));
    return args->items;
  }
  std::vector<std::int64_t> int_tuple(const PickleValuePtr& v, const char* what) {
    if (v->kind != Kind::kTuple && v->kind != Kind::kList)
      fail(fmt::format("{} is not a tuple", what));
    std::vector<std::int64_t> out;
    for (const auto& i : v->items) {
      if (i->kind != Kind::kInt) fail(fmt::format("{} holds a {}", what, i->type_name()));
      out.push_back(i->integer);
    }
    return out;
  }

  PickleValuePtr rebuild_tensor(const std::vector<PickleValuePtr>& a, const std::string& fn) {
    if (a[0]->kind != Kind::kStorage)
      fail(fmt::format("{}: storage is a {}", fn, a[0]->type_name()));
    if (a[1]->kind != Kind::kInt)
      fail(fmt::format("{}: storage offset is a {}", fn, a[1]->type_name()));
    auto t = make(Kind::kTensor);
    t->tensor.storage = a[0];
    t->tensor.storage_offset = a[1]->integer;
    t->tensor.sizes = int_tuple(a[2], "tensor size");
    t->tensor.strides = int_tuple(a[3], "tensor stride");
    if (a.size() > 4) t->tensor.requires_grad = a[4]->kind == Kind::kBool && a[4]->boolean;
    if (t->tensor.sizes.size() != t->tensor.strides.size())
      fail(fmt::format("{}: {} sizes but {} strides", fn, t->tensor.sizes.size(),
                       t->tensor.strides.size()));
    return t;
  }

  // Emulates the allowlisted callables; everything else is refused.
  PickleValuePtr call(const PickleValuePtr& fn, const PickleValuePtr& args) {
    if (fn->kind != Kind::kGlobal) fail(fmt::format("REDUCE calls a {}", fn->type_name()));
    const std::string& f = fn->text;
    if (f == "collections.defaultdict" && options_.allow_torch_modules) {
      // defaultdict(factory[, items]): the optimizers' state. Read as the dict it holds.
      const auto& a = tuple_args(args, f, 0, 2);
      if (!a.empty() && a[0]->kind != Kind::kGlobal && a[0]->kind != Kind::kNone)
        fail(fmt::format("{}: the default factory is a {}", f, a[0]->type_name()));
      return make(Kind::kDict);
    }
    if (!contains(kCallableGlobals, f) && f != "copyreg._reconstructor")
      refuse(f, "may not be called");
    if (f == "collections.OrderedDict") {
      const auto& a = tuple_args(args, f, 0, 1);
      auto d = make(Kind::kDict);
      if (!a.empty()) {
        if (a[0]->kind != Kind::kList && a[0]->kind != Kind::kTuple)
          fail("OrderedDict argument is not a list of pairs");
        for (const auto& pair : a[0]->items) {
          if ((pair->kind != Kind::kTuple && pair->kind != Kind::kList) || pair->items.size() != 2)
            fail("OrderedDict argument is not a list of pairs");
          set_item(*d, pair->items[0], pair->items[1]);
        }
      }
      return d;
    }
    if (f == "torch._utils._rebuild_tensor_v2") return rebuild_tensor(tuple_args(args, f, 6, 7), f);
    if (f == "torch._utils._rebuild_tensor") return rebuild_tensor(tuple_args(args, f, 4, 4), f);
    if (f == "torch._utils._rebuild_parameter" ||
        f == "torch._utils._rebuild_parameter_with_state") {
      const auto& a = tuple_args(args, f, 3, 4);
      if (a[0]->kind != Kind::kTensor) fail(fmt::format("{}: data is a {}", f, a[0]->type_name()));
      return a[0];
    }
    if (f == "builtins.set" || f == "builtins.frozenset") {
      const auto& a = tuple_args(args, f, 0, 1);
      auto s = make(Kind::kSet);
      if (!a.empty()) {
        if (a[0]->kind != Kind::kList && a[0]->kind != Kind::kTuple && a[0]->kind != Kind::kSet)
          fail(fmt::format("{} of a {}", f, a[0]->type_name()));
        for (const auto& i : a[0]->items) append(*s, i);
      }
      return s;
    }
    if (f == "builtins.bytes" || f == "builtins.bytearray" || f == "_codecs.encode") {
      const auto& a = tuple_args(args, f, f == "_codecs.encode" ? 2 : 0, 2);
      if (a.empty()) return make(Kind::kBytes);
      if (a.size() == 1 && a[0]->kind == Kind::kBytes) return make_text(Kind::kBytes, a[0]->text);
      if (a.size() != 2 || a[0]->kind != Kind::kString || a[1]->kind != Kind::kString ||
          (a[1]->text != "latin1" && a[1]->text != "latin-1"))
        fail(fmt::format("{}: only (str, 'latin1') arguments are supported", f));
      bool ok = false;
      auto bytes = latin1_encode_check(a[0]->text, ok);
      if (!ok) fail(fmt::format("{}: text is not latin-1", f));
      return make_text(Kind::kBytes, bytes);
    }
    // copyreg._reconstructor(cls, object, None): protocols 0 and 1 pickle plain instances so.
    const auto& a = tuple_args(args, f, 3, 3);
    if (a[0]->kind != Kind::kGlobal || a[1]->kind != Kind::kGlobal ||
        a[1]->text != "builtins.object" || a[2]->kind != Kind::kNone)
      fail("copyreg._reconstructor: only (class, object, None) is supported");
    return new_object(a[0], {});
  }

  void build(PickleValue& target, const PickleValuePtr& state) {
    if (target.frozen) fail("BUILD on a value already stored in another one");
    if (state.get() == &target) fail("BUILD with the object itself as state");
    state->frozen = true;
    target.depth = std::max(target.depth, state->depth + 1);
    if (target.depth > options_.max_depth)
      fail(fmt::format("nesting deeper than {} levels", options_.max_depth));
    if (target.kind != Kind::kObject && target.kind != Kind::kDict)
      fail(fmt::format("BUILD on a {}", target.type_name()));
    if (state->kind == Kind::kNone) return;
    if (state->kind == Kind::kDict) return set_attributes(target, *state);
    if (state->kind == Kind::kTuple && state->items.size() == 2) {
      for (const auto& part : state->items) {
        if (part->kind == Kind::kDict) {
          set_attributes(target, *part);
        } else if (part->kind != Kind::kNone) {
          fail("BUILD state tuple holds a " + part->type_name());
        }
      }
      return;
    }
    if (target.kind != Kind::kObject) fail("BUILD with a " + state->type_name() + " state");
    target.state = state;
  }

  PickleValuePtr long_from_bytes(std::string_view b) {
    std::size_t n = b.size();
    // Drop redundant sign bytes so that values that fit are plain ints.
    while (n > 1) {
      const auto last = static_cast<unsigned char>(b[n - 1]);
      const auto prev = static_cast<unsigned char>(b[n - 2]);
      if ((last == 0x00 && !(prev & 0x80)) || (last == 0xFF && (prev & 0x80))) {
        --n;
      } else {
        break;
      }
    }
    if (n == 0) return make_int(0);
    if (n > 8) return make_text(Kind::kBigInt, b.substr(0, n));
    std::uint64_t v = 0;
    for (std::size_t i = n; i-- > 0;) v = (v << 8) | static_cast<unsigned char>(b[i]);
    if (static_cast<unsigned char>(b[n - 1]) & 0x80) {
      if (n < 8) v |= ~std::uint64_t{0} << (8 * n);
    }
    return make_int(static_cast<std::int64_t>(v));
  }

  std::int64_t parse_int(std::string_view s) {
    if (!s.empty() && s.back() == 'L') s.remove_suffix(1);
    std::string str(s);
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(str.c_str(), &end, 10);
    if (str.empty() || *end != '\0' || errno == ERANGE)
      fail(fmt::format("bad or too large integer '{}'", str.substr(0, 40)));
    return v;
  }

  std::string unquote_string(std::string_view s) {
    if (s.size() < 2 || (s.front() != '\'' && s.front() != '"') || s.back() != s.front())
      fail("STRING argument is not quoted");
    s = s.substr(1, s.size() - 2);
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (s[i] != '\\' || i + 1 == s.size()) {
        out += s[i];
        continue;
      }
      const char c = s[++i];
      switch (c) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'x':
          if (i + 2 >= s.size()) fail("bad \\x escape in STRING");
          out += static_cast<char>(hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2]));
          i += 2;
          break;
        default:
          out += '\\';
          out += c;
      }
    }
    return out;
  }

  int hex_digit(char h) {
    if (h >= '0' && h <= '9') return h - '0';
    if (h >= 'a' && h <= 'f') return h - 'a' + 10;
    if (h >= 'A' && h <= 'F') return h - 'A' + 10;
    fail("bad hexadecimal escape in a text opcode");
  }

  std::string raw_unicode_escape(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == 'u' || s[i + 1] == 'U')) {
        const std::size_t n = s[i + 1] == 'u' ? 4 : 8;
        if (i + 2 + n > s.size()) fail("bad \\u escape in UNICODE");
        std::uint32_t cp = 0;
        for (std::size_t k = 0; k < n; ++k) {
          cp = cp * 16 + static_cast<std::uint32_t>(hex_digit(s[i + 2 + k]));
        }
        if (cp > 0x10FFFF) fail("code point out of range in UNICODE");
        detail::append_utf8(out, cp);
        i += 1 + n;
      } else {
        detail::append_utf8(out, static_cast<unsigned char>(s[i]));
      }
    }
    return out;
  }

  void step(unsigned char op) {
    switch (op) {
      case 0x80: {  // PROTO
        const auto v = uint_le(1);
        if (v > kHighestProtocol) fail(fmt::format("unsupported pickle protocol {}", v));
        break;
      }
      case 0x95:
        uint_le(8);
        break;  // FRAME: only an I/O hint
      case '(':
        marks_.push_back(stack_.size());
        break;
      case '0':
        pop();
        break;
      case '1':
        pop_mark();
        break;
      case '2':
        push(top());
        break;
      case 'N':
        push(make(Kind::kNone));
        break;
      case 0x88:
      case 0x89: {
        auto b = make(Kind::kBool);
        b->boolean = op == 0x88;
        push(b);
        break;
      }
      case 'I': {
        const auto s = line();
        if (s == "01" || s == "00") {
          auto b = make(Kind::kBool);
          b->boolean = s == "01";
          push(b);
        } else {
          push(make_int(parse_int(s)));
        }
        break;
      }
      case 'J':
        push(make_int(static_cast<std::int32_t>(uint_le(4))));
        break;
      case 'K':
        push(make_int(static_cast<std::int64_t>(uint_le(1))));
        break;
      case 'M':
        push(make_int(static_cast<std::int64_t>(uint_le(2))));
        break;
      case 'L':
        push(make_int(parse_int(line())));
        break;
      case 0x8a:
        push(long_from_bytes(take(uint_le(1))));
        break;
      case 0x8b: {
        const auto n = static_cast<std::int32_t>(uint_le(4));
        if (n < 0) fail("negative LONG4 length");
        push(long_from_bytes(take(static_cast<std::uint64_t>(n))));
        break;
      }
      case 'F': {
        const std::string s(line());
        char* end = nullptr;
        const double d = std::strtod(s.c_str(), &end);
        if (s.empty() || *end != '\0') fail("bad FLOAT");
        auto v = make(Kind::kFloat);
        v->number = d;
        push(v);
        break;
      }
      case 'G': {
        const std::uint64_t bits = [&] {
          const auto s = take(8);
          std::uint64_t b = 0;
          for (int i = 0; i < 8; ++i) b = (b << 8) | static_cast<unsigned char>(s[i]);
          return b;
        }();
        auto v = make(Kind::kFloat);
        std::memcpy(&v->number, &bits, sizeof bits);
        push(v);
        break;
      }
      case 'S':
        push(make_text(Kind::kString, unquote_string(line())));
        break;
      case 'T': {
        const auto n = static_cast<std::int32_t>(uint_le(4));
        if (n < 0) fail("negative BINSTRING length");
        push(make_text(Kind::kString, take(static_cast<std::uint64_t>(n))));
        break;
      }
      case 'U':
        push(make_text(Kind::kString, take(uint_le(1))));
        break;
      case 'V':
        push(make_text(Kind::kString, raw_unicode_escape(line())));
        break;
      case 'X':
        push(make_text(Kind::kString, take(uint_le(4))));
        break;
      case 0x8c:
        push(make_text(Kind::kString, take(uint_le(1))));
        break;
      case 0x8d:
        push(make_text(Kind::kString, take(uint_le(8))));
        break;
      case 'B':
        push(make_text(Kind::kBytes, take(uint_le(4))));
        break;
      case 'C':
        push(make_text(Kind::kBytes, take(uint_le(1))));
        break;
      case 0x8e:
      case 0x96:
        push(make_text(Kind::kBytes, take(uint_le(8))));
        break;
      case 0x97:
        fail("out-of-band buffers (NEXT_BUFFER) are not supported");
      case 0x98:
        top();
        break;  // READONLY_BUFFER
      case ']':
        push(make(Kind::kList));
        break;
      case 'l': {
        auto items = pop_mark();
        auto list = make(Kind::kList);
        for (const auto& i : items) append(*list, i);
        push(list);
        break;
      }
      case ')':
        push(make(Kind::kTuple));
        break;
      case 't':
        push(make_tuple(pop_mark()));
        break;
      case 0x85:
      case 0x86:
      case 0x87: {
        const std::size_t n = op - 0x84;
        std::vector<PickleValuePtr> items(n);
        for (std::size_t i = n; i-- > 0;) items[i] = pop();
        push(make_tuple(std::move(items)));
        break;
      }
      case '}':
        push(make(Kind::kDict));
        break;
      case 'd': {
        auto items = pop_mark();
        if (items.size() % 2) fail("DICT with an odd number of items");
        auto dict = make(Kind::kDict);
        for (std::size_t i = 0; i < items.size(); i += 2) set_item(*dict, items[i], items[i + 1]);
        push(dict);
        break;
      }
      case 0x8f:
        push(make(Kind::kSet));
        break;
      case 0x91: {
        auto items = pop_mark();
        auto set = make(Kind::kSet);
        for (const auto& i : items) append(*set, i);
        push(set);
        break;
      }
      case 'a': {
        auto item = pop();
        append(*top(), item);
        break;
      }
      case 'e':
      case 0x90: {
        auto items = pop_mark();
        auto& list = top();
        if (op == 0x90 && list->kind != Kind::kSet) fail("ADDITEMS to a " + list->type_name());
        for (const auto& i : items) append(*list, i);
        break;
      }
      case 's': {
        auto value = pop();
        auto key = pop();
        set_item(*top(), key, value);
        break;
      }
      case 'u': {
        auto items = pop_mark();
        if (items.size() % 2) fail("SETITEMS with an odd number of items");
        auto& dict = top();
        for (std::size_t i = 0; i < items.size(); i += 2) set_item(*dict, items[i], items[i + 1]);
        break;
      }
      case 'p':
        memo_put(static_cast<std::uint64_t>(parse_int(line())));
        break;
      case 'q':
        memo_put(uint_le(1));
        break;
      case 'r':
        memo_put(uint_le(4));
        break;
      case 0x94:
        memo_put(memo_.size());
        break;
      case 'g':
        memo_get(static_cast<std::uint64_t>(parse_int(line())));
        break;
      case 'h':
        memo_get(uint_le(1));
        break;
      case 'j':
        memo_get(uint_le(4));
        break;
      case 'c': {
        std::string module(line());
        std::string name(line());
        push(global(std::move(module), std::move(name)));
        break;
      }
      case 0x93: {
        auto name = pop();
        auto module = pop();
        if (module->kind != Kind::kString || name->kind != Kind::kString)
          fail("STACK_GLOBAL needs two strings");
        push(global(module->text, name->text));
        break;
      }
      case 'R': {
        auto args = pop();
        auto fn = pop();
        args->frozen = true;
        push(call(fn, args));
        break;
      }
      case 0x81: {
        auto args = pop();
        auto cls = pop();
        if (args->kind != Kind::kTuple) fail("NEWOBJ arguments are not a tuple");
        push(new_object(cls, args->items));
        break;
      }
      case 0x92: {
        auto kwargs = pop();
        auto args = pop();
        auto cls = pop();
        if (args->kind != Kind::kTuple || kwargs->kind != Kind::kDict)
          fail("NEWOBJ_EX needs a tuple and a dict");
        push(new_object(cls, args->items));
        break;
      }
      case 'o': {
        auto items = pop_mark();
        if (items.empty()) fail("OBJ without a class");
        auto cls = items.front();
        items.erase(items.begin());
        push(new_object(cls, std::move(items)));
        break;
      }
      case 'i': {
        std::string module(line());
        std::string name(line());
        auto cls = global(std::move(module), std::move(name));
        push(new_object(cls, pop_mark()));
        break;
      }
      case 'b': {
        auto state = pop();
        build(*top(), state);
        break;
      }
      case 'Q':
      case 'P': {
        auto pid = op == 'Q' ? pop() : make_text(Kind::kString, line());
        if (!options_.persistent_load) fail("persistent id in a pickle that may not have any");
        pid->frozen = true;
        push(options_.persistent_load(pid));
        break;
      }
      case 0x82:
      case 0x83:
      case 0x84:
        fail("extension registry opcodes (EXT1/2/4) are not supported");
      default:
        fail(fmt::format("unknown opcode 0x{:02x}", op));
    }
  }

  std::string_view data_;
  const UnpickleOptions& options_;
  const std::string& name_;
  std::size_t pos_ = 0;
  std::size_t op_pos_ = 0;
  std::vector<PickleValuePtr> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, PickleValuePtr> memo_;
};

// A canonical text for hashable keys, so equal keys (1, 1.0 and True) collide as in Python.
std::string key_of(const PickleValue& v, int depth) {
  switch (v.kind) {
    case Kind::kNone:
      return "N";
    case Kind::kBool:
      return fmt::format("I{}", v.boolean ? 1 : 0);
    case Kind::kInt:
      return fmt::format("I{}", v.integer);
    case Kind::kFloat:
      if (std::isfinite(v.number) && v.number == std::trunc(v.number) &&
          std::abs(v.number) < 9.0e18)
        return fmt::format("I{}", static_cast<std::int64_t>(v.number));
      return fmt::format("F{}", v.number);
    case Kind::kBigInt:
      return fmt::format("L{}:", v.text.size()) + v.text;
    case Kind::kString:
      return fmt::format("S{}:", v.text.size()) + v.text;
    case Kind::kBytes:
      return fmt::format("B{}:", v.text.size()) + v.text;
    case Kind::kGlobal:
      return "G" + v.text;
    case Kind::kTensor:
    case Kind::kObject:
      // Hashed by identity, as Python does (an optimizer's state is keyed by its parameters).
      return fmt::format("@{}", static_cast<const void*>(&v));
    case Kind::kTuple: {
      if (depth > 64) break;
      std::string k = fmt::format("T{}(", v.items.size());
      for (const auto& i : v.items) {
        const auto s = key_of(*i, depth + 1);
        k += fmt::format("{}:", s.size()) + s;
      }
      return k + ")";
    }
    default:
      break;
  }
  throw FormatError("unhashable dict key of type " + v.type_name());
}

}  // namespace

bool is_allowed_pickle_global(std::string_view qualified_name) {
  return contains(kCallableGlobals, qualified_name) || contains(kReferenceGlobals, qualified_name);
}

const PickleValue* PickleValue::get(std::string_view key) const {
  if (kind == Kind::kDict) {
    const auto it = key_index.find(fmt::format("S{}:", key.size()) + std::string(key));
    if (it != key_index.end()) return entries[it->second].second.get();
  }
  const auto it = attribute_index.find(std::string(key));
  return it == attribute_index.end() ? nullptr : attributes[it->second].second.get();
}

std::string PickleValue::type_name() const {
  switch (kind) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
    case Kind::kBigInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kBytes:
      return "bytes";
    case Kind::kList:
      return "list";
    case Kind::kTuple:
      return "tuple";
    case Kind::kSet:
      return "set";
    case Kind::kDict:
      return "dict";
    case Kind::kObject:
      return text;
    case Kind::kGlobal:
      return "global " + text;
    case Kind::kStorage:
      return "storage";
    case Kind::kTensor:
      return "tensor";
  }
  return "?";
}

PickleValuePtr unpickle(std::string_view data, const UnpickleOptions& options,
                        const std::string& name, std::size_t* consumed) {
  return Unpickler(data, options, name).run(consumed);
}

}  // namespace imcap::detail
