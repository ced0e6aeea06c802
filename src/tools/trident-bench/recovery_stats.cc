#include "recovery_stats.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace trident::bench {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\r'; }

// Splits `rest` into key=value tokens; a value may be "double quoted" (no escapes).
std::map<std::string, std::string> Pairs(absl::string_view rest) {
  std::map<std::string, std::string> pairs;
  size_t i = 0;
  while (i < rest.size()) {
    while (i < rest.size() && IsSpace(rest[i])) ++i;
    const size_t key_start = i;
    while (i < rest.size() && !IsSpace(rest[i]) && rest[i] != '=') ++i;
    const absl::string_view key = rest.substr(key_start, i - key_start);
    if (i >= rest.size() || rest[i] != '=') {  // a bare word: skip it
      while (i < rest.size() && !IsSpace(rest[i])) ++i;
      continue;
    }
    ++i;  // '='
    std::string value;
    if (i < rest.size() && rest[i] == '"') {
      const size_t close = rest.find('"', i + 1);
      const size_t end = close == absl::string_view::npos ? rest.size() : close;
      value = std::string(rest.substr(i + 1, end - i - 1));
      i = close == absl::string_view::npos ? rest.size() : close + 1;
    } else {
      const size_t value_start = i;
      while (i < rest.size() && !IsSpace(rest[i])) ++i;
      value = std::string(rest.substr(value_start, i - value_start));
    }
    if (!key.empty()) pairs.emplace(std::string(key), std::move(value));
  }
  return pairs;
}

bool GetInt(const std::map<std::string, std::string>& m, const char* key, int64_t* out) {
  auto it = m.find(key);
  return it != m.end() && absl::SimpleAtoi(it->second, out);
}

bool GetDouble(const std::map<std::string, std::string>& m, const char* key, double* out) {
  auto it = m.find(key);
  return it != m.end() && absl::SimpleAtod(it->second, out) && std::isfinite(*out);
}

std::string Get(const std::map<std::string, std::string>& m, const char* key) {
  auto it = m.find(key);
  return it == m.end() ? "" : it->second;
}

std::string FormatMs(const std::optional<double>& v) {
  if (!v.has_value()) return "-";
  if (*v == std::floor(*v)) return absl::StrFormat("%.0f", *v);
  return absl::StrFormat("%.1f", *v);
}

}  // namespace

std::optional<std::map<std::string, std::string>> ParseEvent(absl::string_view line,
                                                             absl::string_view event) {
  if (event.empty()) return std::nullopt;
  for (size_t pos = line.find(event); pos != absl::string_view::npos;
       pos = line.find(event, pos + 1)) {
    if (pos > 0 && !IsSpace(line[pos - 1])) continue;
    const size_t after = pos + event.size();
    if (after >= line.size() || line[after] != ' ') continue;
    // The next token must be a key=value pair ("recovery into epoch 2" is not the event).
    absl::string_view rest = line.substr(after + 1);
    const absl::string_view first = rest.substr(0, std::min(rest.find(' '), rest.size()));
    if (first.find('=') == absl::string_view::npos || first.front() == '=') continue;
    return Pairs(rest);
  }
  return std::nullopt;
}

std::optional<FaultLine> ParseFaultLine(absl::string_view line) {
  auto m = ParseEvent(line, "fault_injected");
  if (!m) return std::nullopt;
  FaultLine f;
  f.member = Get(*m, "member");
  int64_t signal = 0;
  if (f.member.empty() || !GetInt(*m, "signal", &signal) || !GetInt(*m, "unix_ms", &f.unix_ms)) {
    return std::nullopt;
  }
  f.signal = static_cast<int>(signal);
  return f;
}

std::optional<RecoveryLine> ParseRecoveryLine(absl::string_view line) {
  auto m = ParseEvent(line, "recovery");
  if (!m) return std::nullopt;
  RecoveryLine r;
  r.cause = Get(*m, "cause");
  r.source = Get(*m, "source");
  if (!GetInt(*m, "epoch", &r.epoch) || !GetInt(*m, "dead_rank", &r.dead_rank) ||
      !GetInt(*m, "recover_ms", &r.recover_ms) ||
      !GetInt(*m, "verdict_unix_ms", &r.verdict_unix_ms)) {
    return std::nullopt;
  }
  // Optional: older trainers print no detect_ms, none prints peer figures without a source.
  GetInt(*m, "detect_ms", &r.detect_ms);
  int64_t bytes = 0;
  if (GetInt(*m, "peer_bytes", &bytes)) r.peer_bytes = bytes;
  GetDouble(*m, "peer_ms", &r.peer_ms);
  return r;
}

std::optional<FirstStepLine> ParseFirstStepLine(absl::string_view line) {
  auto m = ParseEvent(line, "first_step_after_recovery");
  if (!m) return std::nullopt;
  FirstStepLine f;
  if (!GetInt(*m, "step", &f.step) || !GetInt(*m, "since_verdict_ms", &f.since_verdict_ms)) {
    return std::nullopt;
  }
  return f;
}

RunLog ParseRunLog(absl::string_view text) {
  RunLog log;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!log.fault) log.fault = ParseFaultLine(line);
    if (auto r = ParseRecoveryLine(line)) {
      ++log.recovery_lines;
      if (!log.recovery) log.recovery = std::move(r);
    }
    if (!log.first_step) log.first_step = ParseFirstStepLine(line);
  }
  return log;
}

std::optional<double> Percentile(std::vector<double> values, double p) {
  if (values.empty()) return std::nullopt;
  std::sort(values.begin(), values.end());
  const double n = static_cast<double>(values.size());
  // p * n / 100 rather than p / 100 * n: 99 * 100 / 100 is exactly 99.
  const double rank = std::ceil(p * n / 100.0 - 1e-9);
  const size_t index = static_cast<size_t>(std::clamp(rank, 1.0, n)) - 1;
  return values[index];
}

Summary Summarize(const std::vector<double>& values) {
  return Summary{static_cast<int>(values.size()), Percentile(values, 50), Percentile(values, 99)};
}

std::string FormatMeasureTable(const std::vector<MeasureRow>& rows) {
  std::string out =
      "| measure | n | p50 ms | p99 ms | goal | p99 meets goal |\n"
      "|---|---:|---:|---:|---|---|\n";
  for (const MeasureRow& row : rows) {
    const Summary s = Summarize(row.values_ms);
    std::string met = "-";
    if (row.goal_ms.has_value() && s.p99.has_value()) met = *s.p99 < *row.goal_ms ? "yes" : "no";
    absl::StrAppend(&out, "| ", row.name, " | ", s.n, " | ", FormatMs(s.p50), " | ",
                    FormatMs(s.p99), " | ", row.goal_text, " | ", met, " |\n");
  }
  return out;
}

std::optional<BenchRow> ParseLastBenchRow(absl::string_view text) {
  std::optional<BenchRow> last;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::ConsumePrefix(&line, "[")) {  // trident-run's prefix: rank 0's lines only
      if (!absl::ConsumePrefix(&line, "rank 0] ")) continue;
    }
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    // bytes count type redop root iters time(us) algbw busbw #wrong
    if (f.size() < 9 || f[0].front() == '#') continue;
    int64_t bytes = 0, count = 0;
    double algbw = 0;
    if (!absl::SimpleAtoi(f[0], &bytes) || !absl::SimpleAtoi(f[1], &count) ||
        !absl::SimpleAtod(f[7], &algbw)) {
      continue;
    }
    last = BenchRow{bytes, algbw};
  }
  return last;
}

std::optional<double> TransferGbps(int64_t bytes, double ms) {
  if (bytes <= 0 || !(ms > 0)) return std::nullopt;
  return static_cast<double>(bytes) / (ms * 1e6);
}

}  // namespace trident::bench
