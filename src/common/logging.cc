#include "common/logging.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/params.h"
#include "spdlog/pattern_formatter.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace trident {
namespace {

std::atomic<int64_t> log_epoch{-1};

// %Q in the pattern: the epoch of SetLogEpoch, or "-" before one is known.
class EpochFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const int64_t e = log_epoch.load(std::memory_order_relaxed);
    const std::string s = e < 0 ? "-" : std::to_string(e);
    dest.append(s.data(), s.data() + s.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<EpochFlag>();
  }
};

constexpr char kLoggerName[] = "trident";

// A pattern with %Q, the epoch.
std::unique_ptr<spdlog::formatter> Formatter(const std::string& pattern) {
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  formatter->add_flag<EpochFlag>('Q').set_pattern(pattern);
  return formatter;
}

struct LoggerState {
  std::shared_ptr<spdlog::logger> logger;
  bool ours = false;  // created here (false: the host registered it)
};

LoggerState& State() {
  static LoggerState* state = [] {
    auto* s = new LoggerState;  // never destroyed: lines may be logged during exit
    s->logger = spdlog::get(kLoggerName);
    if (s->logger == nullptr) {
      // Logs go to stderr so that a program's stdout stays its own (tables, JSON). Not
      // through spdlog's registry factory: registering may race with a host that registers
      // "trident" at the same moment; register_logger below reports that, and we keep ours.
      auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
      s->logger = std::make_shared<spdlog::logger>(kLoggerName, std::move(sink));
      s->logger->set_formatter(Formatter("[%H:%M:%S.%e] [trident epoch %Q] [%l] %v"));
      s->logger->set_level(LogLevelFromEnv());
      s->ours = true;
      try {
        spdlog::register_logger(s->logger);  // so that the host can find it by name
      } catch (const spdlog::spdlog_ex&) {
      }
    }
    return s;
  }();
  return *state;
}

}  // namespace

spdlog::level::level_enum LogLevelFromEnv() {
  if (!CheckParam("TRIDENT_LOG_LEVEL").ok()) return spdlog::level::info;
  const std::string value = absl::AsciiStrToLower(ParamString("TRIDENT_LOG_LEVEL"));
  return spdlog::level::from_str(value == "warning" ? "warn" : value);
}

void SetLogEpoch(int64_t epoch) {
  int64_t cur = log_epoch.load(std::memory_order_relaxed);
  while (cur < epoch && !log_epoch.compare_exchange_weak(cur, epoch)) {
  }
}

spdlog::logger& Logger() { return *State().logger; }

void InitLogging(absl::string_view who) {
  LoggerState& state = State();
  if (!state.ours) return;
  state.logger->set_formatter(
      Formatter(absl::StrCat("[%H:%M:%S.%e] [trident ", who, " epoch %Q] [%l] %v")));
  state.logger->set_level(LogLevelFromEnv());
}

}  // namespace trident
