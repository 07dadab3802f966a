// imcap serve: cpp-httplib parses HTTP; this file owns the routes, the limits and the JSON.
#include "cli/serve_http.hpp"

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <utility>

#include <fmt/format.h>
#include <httplib.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "cli/serve_metrics.hpp"
#include "cli/serve_watchdog.hpp"
#include "detail/io.hpp"
#include "imcap/error.hpp"
#include "imcap/image.hpp"
#include "imcap/version.hpp"

namespace imcap::cli {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

// A request the server refuses: the status and what was wrong.
struct HttpError {
  int status;
  std::string message;
};

// Client headers allowed (cpp-httplib 0.11 adds four of its own: REMOTE_ADDR and friends).
constexpr std::size_t kMaxHeaders = 64;
// Connections waiting for accept() (the kernel caps it at net.core.somaxconn).
constexpr int kListenQueue = 1024;
constexpr std::size_t kMaxFieldBytes = 1024;  // a multipart form field that is not an image
constexpr std::size_t kMaxParts = 64;

struct Route {
  const char* path;
  const char* methods;  // Allow header
  bool needs_key;
};
const Route kRoutes[] = {{"/", "GET, HEAD", false},
                         {"/health", "GET, HEAD", false},
                         {"/metrics", "GET, HEAD", true},
                         {"/v1/caption", "POST", true},
                         {"/v1/caption/batch", "POST", true}};

const Route* find_route(const std::string& path) {
  for (const Route& r : kRoutes)
    if (path == r.path) return &r;
  return nullptr;
}

// A client's bytes in a message: printable ASCII kept, the rest as \xNN, at most 80 bytes.
std::string printable(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < 80; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\')
      out += static_cast<char>(c);
    else
      out += fmt::format("\\x{:02x}", c);
  }
  if (s.size() > 80) out += "...";
  return out;
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message) {
  send_json(res, status, {{"error", {{"code", status}, {"message", message}}}});
}

bool is_caption_route(const std::string& path) {
  return path == "/v1/caption" || path == "/v1/caption/batch";
}

// One part of a multipart/form-data body.
struct Part {
  std::string name, filename, content_type, data;
};

// The request's options: query parameters and form fields, each at most once.
class RequestOptions {
 public:
  void add(const std::string& name, const std::string& value, const char* where) {
    static const char* const known[] = {"beam", "num_return", "max_length", "attention"};
    bool ok = false;
    for (const char* k : known) ok = ok || name == k;
    if (!ok)
      throw HttpError{400, fmt::format("unknown option '{}' in the {} (expected beam, num_return, "
                                       "max_length or attention)",
                                       printable(name), where)};
    if (!values_.emplace(name, value).second)
      throw HttpError{400, fmt::format("option '{}' is given more than once", name)};
  }

  CaptionOptions apply(CaptionOptions o, const ServeConfig& c, bool has_attention) const {
    o.beam_size = integer("beam", o.beam_size, 1, c.max_beam);
    o.max_length = integer("max_length", o.max_length, 1, c.max_length);
    o.num_return = integer("num_return", std::min(o.num_return, o.beam_size), 1, o.beam_size);
    if (const auto it = values_.find("attention"); it != values_.end()) {
      const std::string& v = it->second;
      if (v == "1" || v == "true")
        o.attention_weights = true;
      else if (v == "0" || v == "false")
        o.attention_weights = false;
      else
        throw HttpError{400, fmt::format("option 'attention' must be 0, 1, true or false, got '{}'",
                                         printable(v))};
    }
    if (o.attention_weights && !has_attention)
      throw HttpError{400,
                      "option 'attention': this model's decoder has no attention (serve a "
                      "model trained with --decoder attention)"};
    return o;
  }

 private:
  int integer(const char* name, int fallback, int lo, int hi) const {
    const auto it = values_.find(name);
    if (it == values_.end()) return std::clamp(fallback, lo, hi);
    const std::string& v = it->second;
    bool digits = !v.empty() && v.size() <= 9;
    for (const char ch : v) digits = digits && ch >= '0' && ch <= '9';
    const long n = digits ? std::stol(v) : -1;
    if (!digits || n < lo || n > hi)
      throw HttpError{400, fmt::format("option '{}' must be a whole number from {} to {}, got '{}'",
                                       name, lo, hi, printable(v))};
    return static_cast<int>(n);
  }
  std::map<std::string, std::string> values_;
};

json caption_json(const Caption& c) {
  json j = {{"text", c.text}, {"tokens", c.tokens}, {"log_prob", c.log_prob}};
  if (c.attention.defined()) {
    const at::Tensor a = c.attention.to(torch::kCPU, torch::kFloat).contiguous();
    json rows = json::array();
    for (std::int64_t w = 0; w < a.size(0); ++w) {
      json row = json::array();
      const float* p = a[w].data_ptr<float>();
      for (std::int64_t i = 0; i < a.size(1); ++i) row.push_back(std::round(p[i] * 1e4) / 1e4);
      rows.push_back(std::move(row));
    }
    j["attention"] = std::move(rows);
  }
  return j;
}

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// Whether two strings are equal, in time that depends on their lengths only.
bool constant_time_equal(const std::string& a, const std::string& b) {
  // Every byte of the longer string is read whatever the contents; the lengths count too.
  const std::size_t n = std::max(a.size(), b.size());
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = static_cast<unsigned char>(diff | (x ^ y));
  }
  return diff == 0;
}

}  // namespace

struct CaptionServer::Impl {
  std::shared_ptr<const Captioner> captioner;
  ServeConfig config;
  BatchingCaptioner batcher;
  ServeMetrics metrics;
  ConnectionWatchdog watchdog;
  httplib::Server http;
  std::atomic<bool> stopping{false};
  std::string model_name;
  bool has_attention = false;
  DecodeOptions decode_options;  // the model's fast JPEG decoding, the server's limits
  int port = 0;
  int listen_socket = -1;  // the socket bind() listens on, once bound

  Impl(std::shared_ptr<const Captioner> c, ServeConfig cfg)
      : captioner(c),
        config(std::move(cfg)),
        batcher(c, config.batching),
        watchdog(std::chrono::seconds(config.timeout_s)) {
    model_name = detail::file_name(config.model_path);
    has_attention = captioner->model().decoder_kind() == DecoderKind::kAttention;
    decode_options = captioner->model().eval_transform().fast_decode_options();
    decode_options.max_pixels = config.max_pixels;
    decode_options.max_file_bytes = config.max_body_bytes;
    configure();
  }

  // The request's Origin when it may read the reply; std::nullopt when it names another site
  // that is not allowed. A request without Origin (curl, a server) or from the server's own page
  // passes with an empty string.
  std::optional<std::string> allowed_origin(const httplib::Request& req) const {
    if (!req.has_header("Origin")) return std::string();
    const std::string origin = req.get_header_value("Origin");
    // The server's own page: the same host and port, whatever the scheme (a TLS proxy in front
    // makes it https while the server speaks http).
    const auto scheme_end = origin.find("://");
    if (scheme_end != std::string::npos &&
        origin.compare(scheme_end + 3, std::string::npos, req.get_header_value("Host")) == 0 &&
        !req.get_header_value("Host").empty())
      return std::string();
    for (const auto& o : config.allow_origins)
      if (o == "*" || o == origin) return origin;
    return std::nullopt;
  }

  std::string body_too_large(const std::string& length = {}) const {
    return fmt::format(
        "the body{} is larger than the server's limit of {} bytes "
        "(--max-body-bytes)",
        length.empty() ? "" : " (" + length + " bytes)", config.max_body_bytes);
  }

  bool authorised(const httplib::Request& req) const {
    if (config.api_key.empty()) return true;
    std::string given = req.get_header_value("X-API-Key");
    const std::string auth = req.get_header_value("Authorization");
    if (given.empty() && auth.rfind("Bearer ", 0) == 0) given = auth.substr(7);
    return constant_time_equal(given, config.api_key);
  }

  httplib::Server::HandlerResponse pre_route(const httplib::Request& req, httplib::Response& res) {
    using R = httplib::Server::HandlerResponse;
    watchdog.request_started(peer(req));
    res.set_header("X-Content-Type-Options", "nosniff");
    if (req.headers.size() > kMaxHeaders + 4) {
      send_error(res, 431, fmt::format("too many headers: at most {}", kMaxHeaders));
      return R::Handled;
    }
    const Route* route = find_route(req.path);
    if (!route) {
      send_error(res, 404,
                 fmt::format("no such path '{}' (the server has GET /, /health, /metrics and POST "
                             "/v1/caption, /v1/caption/batch)",
                             printable(req.path)));
      return R::Handled;
    }
    const auto origin = allowed_origin(req);
    if (!origin) {
      send_error(res, 403,
                 fmt::format("cross-origin request from '{}' refused (start the server with "
                             "--allow-origin to allow a site's pages)",
                             printable(req.get_header_value("Origin"))));
      return R::Handled;
    }
    if (!origin->empty()) {
      res.set_header("Access-Control-Allow-Origin", *origin);
      res.set_header("Vary", "Origin");
    }
    if (req.method == "OPTIONS" && !origin->empty()) {  // a CORS preflight
      res.status = 204;
      res.set_header("Access-Control-Allow-Methods", route->methods);
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type, X-API-Key");
      res.set_header("Access-Control-Max-Age", "600");
      return R::Handled;
    }
    if (std::string(route->methods).find(req.method) == std::string::npos) {
      res.set_header("Allow", route->methods);
      send_error(res, 405,
                 fmt::format("{} {} is not allowed (use {})", printable(req.method), req.path,
                             route->methods));
      return R::Handled;
    }
    if (route->needs_key && !authorised(req)) {
      res.set_header("WWW-Authenticate", "Bearer");
      send_error(res, 401,
                 "missing or wrong API key (send it as 'Authorization: Bearer KEY' or "
                 "'X-API-Key: KEY')");
      return R::Handled;
    }
    // cpp-httplib would read and discard an oversized body before answering: refuse at once.
    if (req.has_header("Content-Length")) {
      const std::string length = req.get_header_value("Content-Length");
      const bool digits = !length.empty() && length.size() <= 19 &&
                          length.find_first_not_of("0123456789") == std::string::npos;
      if (!digits || std::stoull(length) > config.max_body_bytes) {
        if (digits)
          send_error(res, 413, body_too_large(length));
        else
          send_error(res, 400, fmt::format("bad Content-Length '{}'", printable(length)));
        return R::Handled;
      }
    }
    if (stopping && is_caption_route(req.path)) {
      res.set_header("Retry-After", "1");
      send_error(res, 503, "the server is shutting down");
      return R::Handled;
    }
    return R::Unhandled;
  }

  // Messages for the errors cpp-httplib answers by itself (their bodies are empty).
  httplib::Server::HandlerResponse error_page(const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string message;
    switch (res.status) {
      case 400:
        message =
            "malformed request: the request line, a header, the query string or the multipart "
            "body could not be read";
        break;
      case 413:
        message = body_too_large();
        break;
      case 414:
        message = "the request URI is too long";
        break;
      case 416:
        message = "bad Range header";
        break;
      case 431:
        message = "too many or too large headers";
        break;
      default:
        message = fmt::format("HTTP status {}", res.status);
        break;
    }
    send_error(res, res.status, message);
    return httplib::Server::HandlerResponse::Handled;
  }

  static std::string peer(const httplib::Request& req) {
    return req.remote_addr + ":" + std::to_string(req.remote_port);
  }

  std::string route_label(const std::string& path) const {
    return find_route(path) ? path : "other";
  }

  // Reads the body with the deadline; raw bytes, or the parts of a multipart form.
  void read_body(const httplib::Request& req, httplib::Response& res,
                 const httplib::ContentReader& reader, Clock::time_point deadline, std::string& raw,
                 std::vector<Part>& parts) {
    bool late = false, too_many = false, too_big = false;
    std::size_t bytes = 0;  // chunked bodies are not limited by cpp-httplib 0.11
    const auto fits = [&](std::size_t n) {
      bytes += n;
      too_big = too_big || bytes > config.max_body_bytes;
      return !too_big;
    };
    const auto in_time = [&] {
      late = late || Clock::now() > deadline;
      return !late;
    };
    bool ok;
    if (req.is_multipart_form_data()) {
      ok = reader(
          [&](const httplib::MultipartFormData& f) {
            if (parts.size() >= kMaxParts) {
              too_many = true;
              return false;
            }
            parts.push_back({f.name, f.filename, f.content_type, {}});
            return in_time();
          },
          [&](const char* data, std::size_t n) {
            Part& p = parts.back();
            if (!fits(n)) return false;
            if (p.name != "image" && p.data.size() + n > kMaxFieldBytes) {
              too_many = true;
              return false;
            }
            p.data.append(data, n);
            return in_time();
          });
    } else {
      ok = reader([&](const char* data, std::size_t n) {
        if (!fits(n)) return false;
        raw.append(data, n);
        return in_time();
      });
    }
    if (ok) return;
    if (late || Clock::now() > deadline)
      throw HttpError{408, fmt::format("the request took longer than {} s to arrive (--timeout-s)",
                                       config.timeout_s)};
    if (too_many)
      throw HttpError{400, fmt::format("the form has more than {} parts, or a field that is not "
                                       "an image has more than {} bytes",
                                       kMaxParts, kMaxFieldBytes)};
    if (too_big || res.status == 413) throw HttpError{413, body_too_large()};
    throw HttpError{400,
                    "the body could not be read: it was cut short, or is a malformed multipart "
                    "form"};
  }

  Image decode(const std::string& bytes, const std::string& name) const {
    try {
      return decode_image_memory(bytes.data(), bytes.size(), name, decode_options);
    } catch (const SecurityError& e) {
      throw HttpError{413, e.what()};
    } catch (const Error& e) {
      throw HttpError{400, e.what()};
    }
  }

  void caption(const httplib::Request& req, httplib::Response& res,
               const httplib::ContentReader& reader, bool batch) {
    const auto start = Clock::now();
    const std::string route = batch ? "/v1/caption/batch" : "/v1/caption";
    metrics.set_in_flight(1);
    try {
      RequestOptions request_options;
      for (const auto& [k, v] : req.params) request_options.add(k, v, "query string");
      std::string raw;
      std::vector<Part> parts;
      read_body(req, res, reader, start + std::chrono::seconds(config.timeout_s), raw, parts);
      const auto read = Clock::now();
      std::vector<const Part*> images;
      for (const Part& p : parts) {
        if (p.name == "image")
          images.push_back(&p);
        else
          request_options.add(p.name, p.data, "form");
      }
      const CaptionOptions options = request_options.apply(config.defaults, config, has_attention);
      std::vector<Image> decoded;
      if (req.is_multipart_form_data()) {
        if (images.empty())
          throw HttpError{400, "the form has no field 'image' with the image's bytes"};
        if (!batch && images.size() > 1)
          throw HttpError{400, fmt::format("the form has {} images; POST /v1/caption takes one "
                                           "(use /v1/caption/batch for several)",
                                           images.size())};
        if (images.size() > static_cast<std::size_t>(config.max_images))
          throw HttpError{413, fmt::format("the form has {} images, more than the server's "
                                           "limit of {} (--max-images)",
                                           images.size(), config.max_images)};
        for (std::size_t i = 0; i < images.size(); ++i)
          decoded.push_back(decode(images[i]->data,
                                   batch ? fmt::format("image {}", i + 1) : std::string("image")));
      } else {
        if (batch)
          throw HttpError{400,
                          "POST /v1/caption/batch takes a multipart/form-data body with one "
                          "field 'image' per image"};
        if (raw.empty())
          throw HttpError{400,
                          "the body is empty: send the image's bytes, or a "
                          "multipart/form-data field 'image'"};
        decoded.push_back(decode(raw, "body"));
      }
      const auto decoded_at = Clock::now();
      std::future<BatchResult> future;
      try {
        future = batcher.submit(decoded, options);
      } catch (const QueueFull& e) {
        res.set_header("Retry-After", "1");
        throw HttpError{503, fmt::format("the server is busy ({} images queued); try again",
                                         config.batching.max_queue)};
      } catch (const Closed&) {
        res.set_header("Retry-After", "1");
        throw HttpError{503, "the server is shutting down"};
      }
      const BatchResult result = future.get();
      metrics.count_images(decoded.size());
      json timing = {
          {"read", std::chrono::duration<double, std::milli>(read - start).count()},
          {"decode", std::chrono::duration<double, std::milli>(decoded_at - read).count()},
          {"queue", result.timing.queue_ms},
          {"encode", result.timing.encode_ms},
          {"search", result.timing.search_ms},
          {"total", ms_since(start)}};
      json body = {{"model", model_name},
                   {"timing_ms", timing},
                   {"batch_images", result.timing.batch_images}};
      const auto list = [](const std::vector<Caption>& cs) {
        json a = json::array();
        for (const Caption& c : cs) a.push_back(caption_json(c));
        return a;
      };
      if (options.attention_weights) {
        const std::int64_t cells = captioner->model().decoder_kind() == DecoderKind::kAttention
                                       ? result.captions.front().front().attention.size(1)
                                       : 0;
        body["grid"] = static_cast<std::int64_t>(std::lround(std::sqrt(double(cells))));
      }
      if (batch) {
        json results = json::array();
        for (const auto& cs : result.captions) results.push_back({{"captions", list(cs)}});
        body["results"] = std::move(results);
      } else {
        body["captions"] = list(result.captions.front());
      }
      send_json(res, 200, body);
    } catch (const HttpError& e) {
      send_error(res, e.status, e.message);
    } catch (const std::exception& e) {
      send_error(res, 500, fmt::format("internal error: {}", e.what()));
    }
    metrics.observe_latency(route, std::chrono::duration<double>(Clock::now() - start).count());
    metrics.set_in_flight(-1);
  }

  json health() const {
    const auto& m = captioner->model();
    return {{"status", stopping ? "stopping" : "ok"},
            {"model", model_name},
            {"version", kVersion},
            {"decoder", to_string(m.decoder_kind())},
            {"encoder", to_string(m.config().encoder.arch)},
            {"image_size", m.config().image_crop},
            {"vocab_size", m.vocab().size()},
            {"attention", has_attention},
            {"auth", !config.api_key.empty()},
            {"max_batch", config.batching.max_batch},
            {"max_images", config.max_images},
            {"max_body_bytes", config.max_body_bytes},
            {"defaults",
             {{"beam", config.defaults.beam_size},
              {"num_return", config.defaults.num_return},
              {"max_length", config.defaults.max_length}}}};
  }

  void configure() {
    const auto threads = static_cast<std::size_t>(std::max(1, config.http_threads));
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    // Headers and body go out in separate writes: without TCP_NODELAY the second waits for the
    // client's delayed ACK (40 ms on Linux), which dominated a small model's latency.
    http.set_tcp_nodelay(true);
    // cpp-httplib's own options are SO_REUSEPORT, which lets a second server bind the same port
    // unnoticed; SO_REUSEADDR only allows a restart while old connections linger. The socket is
    // kept to widen its listen queue once bound (CaptionServer::bind).
    http.set_socket_options([this](socket_t sock) {
      int yes = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
      listen_socket = sock;  // the last one made is the one that bound
    });
    http.set_payload_max_length(config.max_body_bytes);
    http.set_read_timeout(config.timeout_s, 0);
    http.set_write_timeout(config.timeout_s, 0);
    http.set_keep_alive_timeout(std::min(5, config.timeout_s));
    http.set_keep_alive_max_count(1000);
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      return pre_route(req, res);
    });
    http.set_error_handler(httplib::Server::HandlerWithResponse(
        [this](const httplib::Request& req, httplib::Response& res) {
          return error_page(req, res);
        }));
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res,
                                  std::exception_ptr) { send_error(res, 500, "internal error"); });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      metrics.count_response(route_label(req.path), res.status);
      watchdog.request_finished(peer(req));
    });
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_header("Content-Security-Policy",
                     "default-src 'none'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
                     "script-src 'unsafe-inline'; connect-src 'self'");
      res.set_content(serve_web_page(), "text/html; charset=utf-8");
    });
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      send_json(res, stopping ? 503 : 200, health());
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics.render(batcher.stats(), config.batching.max_batch, watchdog.cut()),
                      "text/plain; version=0.0.4; charset=utf-8");
    });
    http.Post("/v1/caption",
              [this](const httplib::Request& req, httplib::Response& res,
                     const httplib::ContentReader& reader) { caption(req, res, reader, false); });
    http.Post("/v1/caption/batch",
              [this](const httplib::Request& req, httplib::Response& res,
                     const httplib::ContentReader& reader) { caption(req, res, reader, true); });
  }
};

CaptionServer::CaptionServer(std::shared_ptr<const Captioner> captioner, ServeConfig config)
    : impl_(std::make_unique<Impl>(std::move(captioner), std::move(config))) {}

CaptionServer::~CaptionServer() = default;

int CaptionServer::bind() {
  Impl& s = *impl_;
  const int port = s.config.port == 0
                       ? s.http.bind_to_any_port(s.config.host)
                       : (s.http.bind_to_port(s.config.host, s.config.port) ? s.config.port : -1);
  if (port <= 0)
    throw IoError(
        fmt::format("cannot listen on {}:{} (the port is in use, or the host is not an "
                    "address of this machine)",
                    s.config.host, s.config.port));
  // Debian's cpp-httplib listens with a queue of 5 connections: a burst of more clients than
  // that had its connections dropped by the kernel and retried by the clients a second later.
  // Should it fail, the server still runs with the shorter queue.
  if (s.listen_socket >= 0) ::listen(s.listen_socket, kListenQueue);
  s.port = port;
  return port;
}

void CaptionServer::run() {
  impl_->watchdog.start(impl_->port);
  impl_->http.listen_after_bind();
  impl_->watchdog.stop();
  impl_->batcher.close();
}

void CaptionServer::stop() {
  impl_->stopping = true;
  impl_->batcher.drain();  // the requests in flight need not wait for company any more
  impl_->http.stop();
}

}  // namespace imcap::cli
