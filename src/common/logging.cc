#include "common/logging.h"

#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/params.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace trident {
namespace {

constexpr char kLoggerName[] = "trident";

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
      s->logger->set_pattern("[%H:%M:%S.%e] [trident] [%l] %v");
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

spdlog::logger& Logger() { return *State().logger; }

void InitLogging(absl::string_view who) {
  LoggerState& state = State();
  if (!state.ours) return;
  state.logger->set_pattern(absl::StrCat("[%H:%M:%S.%e] [trident ", who, "] [%l] %v"));
  state.logger->set_level(LogLevelFromEnv());
}

}  // namespace trident
