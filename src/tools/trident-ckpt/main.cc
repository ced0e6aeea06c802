// trident-ckpt: lists, inspects, verifies and exports the checkpoints in a directory written by
// trident::CheckpointEngine. Never changes a checkpoint. See kUsage.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "checkpoint/file_system.h"
#include "checkpoint/format.h"
#include "checkpoint/internal.h"
#include "common/params.h"
#include "common/status_macros.h"
#include "trident/checkpoint.h"

namespace trident {
namespace {

constexpr char kUsage[] = R"(usage: trident-ckpt COMMAND DIR [--step N | --all]
       trident-ckpt export DIR STEP OUT [--max-file-size BYTES]

Reads the checkpoints that trident::CheckpointEngine writes into DIR (docs/checkpoint.md).
Never changes a checkpoint.

Commands:
  ls DIR       one line per committed checkpoint, oldest first: step, whether `latest` names
               it, epoch, layout, world size, shard files, bytes on disk, tensors, time of the
               commit (UTC). Then the half-written directories that loading ignores and the next
               save deletes.
  inspect DIR  a checkpoint's manifest: step, epoch, layout, files with their ranks and sizes,
               per-rank metadata sizes, and for every tensor its dtype, global shape and
               shards (rank, file, offset in the global tensor, shape, bytes, crc32c).
  verify DIR   checks every field of the manifest against the others, then reads every shard of
               the checkpoint: file sizes, safetensors headers against the manifest (and their
               DCP_SHARDING_INFO), the CRC32C of every tensor piece, and the
               model.safetensors.index.json. Without --step, also that `latest` names a
               committed checkpoint.
  export DIR STEP OUT
               writes a consolidated copy of checkpoint STEP (a number, or `latest`) into the
               directory OUT (created; must be empty): every tensor whole, at its global shape,
               in model-00001-of-0000N.safetensors files of at most --max-file-size bytes of
               data each (a larger tensor gets a file of its own), with __metadata__ format
               "pt", and model.safetensors.index.json mapping each tensor to its file. Loads
               with safetensors.torch.load_file and Hugging Face loaders. Every piece is
               checksummed as it is read; a bad checkpoint exits 1 and leaves no index in OUT.
               The per-rank metadata (RNG, data loader) is not exported.

Options:
  --step N     the checkpoint of step N (default: the latest, as loading resolves it: the step
               `latest` names, else the newest committed one)
  --all        verify: every committed checkpoint
  --max-file-size BYTES
               export: data bytes per output file, with an optional K, M or G suffix (powers
               of 1024; default 5G)
  -h, --help   this text

Exit status: 0 when all is well; 1 when a checkpoint is missing, unreadable or bad (verify
prints the first bad file and tensor), `latest` names no committed checkpoint, or export cannot
write OUT; 2 on bad usage or a bad TRIDENT_* setting.
)";

[[noreturn]] void Usage(const std::string& message) {
  std::fprintf(stderr, "trident-ckpt: %s\n(try trident-ckpt --help)\n", message.c_str());
  std::exit(2);
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "trident-ckpt: %s\n", s.ToString().c_str());
  return 1;
}

std::string Bytes(uint64_t n) {
  if (n >= (uint64_t{1} << 30)) return absl::StrFormat("%.2f GiB", n / double(uint64_t{1} << 30));
  if (n >= (uint64_t{1} << 20)) return absl::StrFormat("%.2f MiB", n / double(1 << 20));
  if (n >= (uint64_t{1} << 10)) return absl::StrFormat("%.1f KiB", n / double(1 << 10));
  return absl::StrCat(n, " B");
}

std::string Time(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(unix_ms), absl::UTCTimeZone());
}

int List(const std::string& dir) {
  auto list = ListCheckpoints(dir);
  if (!list.ok()) return Fail(list.status());
  std::printf("%-12s %-6s %-6s %-16s %-5s %-5s %-12s %-7s %s\n", "step", "latest", "epoch",
              "layout", "ranks", "files", "bytes", "tensors", "committed (UTC)");
  for (const CheckpointInfo& c : *list) {
    auto m = ReadManifest(dir, c.step);
    if (!m.ok()) {
      std::printf("%-12lld %-6s unreadable: %s\n", static_cast<long long>(c.step),
                  c.latest ? "*" : "", m.status().ToString().c_str());
      continue;
    }
    uint64_t bytes = 0;
    for (const FileInfo& f : m->files) bytes += f.bytes;
    std::printf("%-12lld %-6s %-6lld %-16s %-5d %-5zu %-12s %-7zu %s\n",
                static_cast<long long>(c.step), c.latest ? "*" : "",
                static_cast<long long>(m->epoch), m->layout.empty() ? "-" : m->layout.c_str(),
                m->world_size, m->files.size(), Bytes(bytes).c_str(), m->tensors.size(),
                Time(m->created_unix_ms).c_str());
  }
  auto names = PosixFileSystem()->ListDir(dir);
  if (names.ok()) {
    for (const std::string& name : *names) {
      if (ckpt::IsStaleDirName(name)) {
        std::printf("half-written (ignored; the next save deletes it): %s\n", name.c_str());
      }
    }
  }
  return 0;
}

int Inspect(const std::string& dir, int64_t step) {
  auto m = ReadManifest(dir, step);
  if (!m.ok()) return Fail(m.status());
  std::printf("step %lld  epoch %lld  layout %s  world size %d  format version %d\n",
              static_cast<long long>(m->step), static_cast<long long>(m->epoch),
              m->layout.empty() ? "-" : m->layout.c_str(), m->world_size, m->version);
  std::printf("directory %s  committed %s UTC\n",
              JoinPath(dir, ckpt::StepDirName(m->step)).c_str(), Time(m->created_unix_ms).c_str());
  std::printf("files:\n");
  for (const FileInfo& f : m->files) {
    std::printf("  %-28s rank %-5d %s\n", f.name.c_str(), f.rank, Bytes(f.bytes).c_str());
  }
  std::printf("metadata bytes per rank:");
  for (const std::string& md : m->metadata) std::printf(" %zu", md.size());
  std::printf("\ntensors:\n");
  for (const auto& [name, t] : m->tensors) {
    std::printf("  %s  %s %s  %zu shard%s\n", name.c_str(), std::string(DTypeName(t.dtype)).c_str(),
                ckpt::ShapeString(t.global_shape).c_str(), t.shards.size(),
                t.shards.size() == 1 ? "" : "s");
    for (const ShardInfo& s : t.shards) {
      std::printf("    rank %-5d %-28s offset %-14s shape %-14s %10s  crc32c %08x%s\n", s.rank,
                  s.file.c_str(), ckpt::ShapeString(s.offset).c_str(),
                  ckpt::ShapeString(s.shape).c_str(), Bytes(s.byte_length).c_str(), s.crc32c,
                  s.replica_count > 1 ? absl::StrCat("  (1 of ", s.replica_count, " replicas)").c_str()
                                      : "");
    }
  }
  return 0;
}

int VerifyOne(const std::string& dir, int64_t step) {
  absl::Status s = VerifyCheckpoint(dir, step);
  if (!s.ok()) {
    std::printf("BAD  step %lld: %s\n", static_cast<long long>(step), s.ToString().c_str());
    std::fprintf(stderr, "trident-ckpt: verify failed: %s\n", s.ToString().c_str());
    return 1;
  }
  auto m = ReadManifest(dir, step);
  if (!m.ok()) return Fail(m.status());
  size_t shards = 0;
  uint64_t bytes = 0;
  for (const auto& [name, t] : m->tensors) {
    shards += t.shards.size();
    for (const ShardInfo& sh : t.shards) bytes += sh.byte_length;
  }
  std::printf("ok   step %lld: %zu files, %zu tensors, %zu shards, %s checked\n",
              static_cast<long long>(step), m->files.size(), m->tensors.size(), shards,
              Bytes(bytes).c_str());
  return 0;
}

// --- export --------------------------------------------------------------------------------

// Reads at most this many bytes of tensors per LoadCheckpoint call (one tensor may be more).
constexpr uint64_t kExportBatchBytes = uint64_t{256} << 20;

struct ExportFile {
  std::string name;
  std::vector<ckpt::SafetensorsEntry> entries;
  uint64_t data_bytes = 0;
};

// Writes one output file under a temporary name, then renames it into place.
absl::Status WriteExportFile(FileSystem& fs, const std::string& dir, int64_t step,
                             const std::string& out, const ExportFile& file) {
  const std::string path = JoinPath(out, file.name);
  const std::string tmp = path + ".tmp";
  const std::string prefix = ckpt::BuildSafetensorsPrefix(
      file.entries, {{ckpt::kShardFormatKey, ckpt::kShardFormatValue},
                     {ckpt::kTridentFormatKey, ckpt::kFormatName},
                     {"step", absl::StrCat(step)},
                     {"exported_from", JoinPath(dir, ckpt::StepDirName(step))}});
  ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f, fs.NewWritableFile(tmp, /*direct=*/false));
  RETURN_IF_ERROR(f->Write(0, prefix.data(), prefix.size()));
  for (size_t i = 0; i < file.entries.size();) {
    // A batch of whole tensors, read by one LoadCheckpoint (one manifest read, CRCs checked).
    size_t j = i;
    uint64_t bytes = 0;
    while (j < file.entries.size() &&
           (j == i || bytes + (file.entries[j].end - file.entries[j].begin) <= kExportBatchBytes)) {
      bytes += file.entries[j].end - file.entries[j].begin;
      ++j;
    }
    std::vector<char> buffer(std::max<uint64_t>(bytes, 1));
    std::vector<TensorRequest> requests;
    for (size_t k = i; k < j; ++k) {
      const ckpt::SafetensorsEntry& e = file.entries[k];
      char* at = buffer.data() + (e.begin - file.entries[i].begin);
      requests.push_back({e.name, Tensor(at, e.dtype, e.shape), {}, e.shape});
    }
    auto loaded = LoadCheckpoint(dir, step, requests);
    if (!loaded.ok()) return loaded.status();
    RETURN_IF_ERROR(f->Write(prefix.size() + file.entries[i].begin, buffer.data(), bytes));
    i = j;
  }
  RETURN_IF_ERROR(f->Sync());
  RETURN_IF_ERROR(f->Close());
  return fs.Rename(tmp, path);
}

int Export(const std::string& dir, const std::string& step_arg, const std::string& out,
           uint64_t max_file_bytes) {
  int64_t step = kLatestStep;
  if (step_arg != "latest" && (!absl::SimpleAtoi(step_arg, &step) || step < 0)) {
    Usage("export: STEP must be a step number or `latest`, not '" + step_arg + "'");
  }
  auto m = ReadManifest(dir, step);  // validated as a whole
  if (!m.ok()) return Fail(m.status());
  step = m->step;
  std::shared_ptr<FileSystem> fs = PosixFileSystem();
  if (absl::Status s = fs->CreateDir(out); !s.ok()) return Fail(s);
  auto existing = fs->ListDir(out);
  if (!existing.ok()) return Fail(existing.status());
  if (!existing->empty()) {
    return Fail(absl::FailedPreconditionError(absl::StrCat(
        "export: ", out, " is not empty (", existing->front(),
        " ...): give a new or empty directory, so that no file of another model is mixed in")));
  }
  // Tensors in name order, packed into files of at most max_file_bytes of data.
  std::vector<ExportFile> files;
  uint64_t total = 0;
  for (const auto& [name, t] : m->tensors) {
    const uint64_t bytes = ckpt::CheckedBytes(t.global_shape, t.dtype).value();  // validated
    if (files.empty() || (files.back().data_bytes > 0 &&
                          files.back().data_bytes + bytes > max_file_bytes)) {
      files.emplace_back();
    }
    ExportFile& f = files.back();
    f.entries.push_back({name, t.dtype, t.global_shape, f.data_bytes, f.data_bytes + bytes});
    f.data_bytes += bytes;
    total += bytes;
  }
  std::map<std::string, std::string> weight_map;
  for (size_t i = 0; i < files.size(); ++i) {
    files[i].name = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, files.size());
    for (const ckpt::SafetensorsEntry& e : files[i].entries) weight_map[e.name] = files[i].name;
  }
  for (const ExportFile& f : files) {
    if (absl::Status s = WriteExportFile(*fs, dir, step, out, f); !s.ok()) {
      return Fail(Annotate(s, absl::StrCat("export of step ", step, " to ", out, " (", f.name,
                                           "); nothing was committed: OUT has no index")));
    }
  }
  // The index last: its presence says the export is complete.
  const std::string index = JoinPath(out, ckpt::kIndexName);
  absl::Status s = WriteFileAndSync(
      *fs, index + ".tmp",
      ckpt::WeightMapIndexJson(weight_map, total,
                               {{ckpt::kTridentFormatKey, ckpt::kFormatName},
                                {"step", absl::StrCat(step)}}));
  if (s.ok()) s = fs->Rename(index + ".tmp", index);
  if (s.ok()) s = fs->SyncDir(out);
  if (!s.ok()) return Fail(s);
  std::printf("exported step %lld: %zu tensors, %s in %zu file%s, to %s\n",
              static_cast<long long>(step), m->tensors.size(), Bytes(total).c_str(), files.size(),
              files.size() == 1 ? "" : "s", out.c_str());
  return 0;
}

// "5G", "300M", "4096": bytes; false on anything else or zero.
bool ParseBytes(std::string v, uint64_t* out) {
  uint64_t scale = 1;
  if (!v.empty()) {
    const char c = v.back();
    if (c == 'K' || c == 'k') scale = uint64_t{1} << 10;
    if (c == 'M' || c == 'm') scale = uint64_t{1} << 20;
    if (c == 'G' || c == 'g') scale = uint64_t{1} << 30;
    if (scale != 1) v.pop_back();
  }
  uint64_t n = 0;
  if (!absl::SimpleAtoi(v, &n) || n == 0 || n > UINT64_MAX / scale) return false;
  *out = n * scale;
  return true;
}

int Main(int argc, char** argv) {
  if (absl::Status params = CheckParams(); !params.ok()) {
    std::fprintf(stderr, "trident-ckpt: %s\n", std::string(params.message()).c_str());
    return 2;
  }
  std::vector<std::string> positional;
  int64_t step = kLatestStep;
  bool all = false;
  uint64_t max_file_bytes = uint64_t{5} << 30;
  bool max_file_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--all") {
      all = true;
    } else if (a == "--max-file-size" || a.rfind("--max-file-size=", 0) == 0) {
      std::string v = a == "--max-file-size" ? (i + 1 < argc ? argv[++i] : "") : a.substr(16);
      if (!ParseBytes(v, &max_file_bytes)) Usage("--max-file-size needs a size such as 5G");
      max_file_given = true;
    } else if (a == "--step" || a.rfind("--step=", 0) == 0) {
      std::string v = a == "--step" ? (i + 1 < argc ? argv[++i] : "") : a.substr(7);
      if (!absl::SimpleAtoi(v, &step) || step < 0) Usage("--step needs a step number");
    } else if (a.rfind("--", 0) == 0) {
      Usage("unknown option " + a);
    } else {
      positional.push_back(a);
    }
  }
  if (!positional.empty() && positional[0] == "export") {
    if (positional.size() != 4) Usage("expected export DIR STEP OUT");
    if (all || step != kLatestStep) Usage("export takes its step as STEP, not --step or --all");
    return Export(positional[1], positional[2], positional[3], max_file_bytes);
  }
  if (max_file_given) Usage("--max-file-size applies to export only");
  if (positional.size() != 2) Usage("expected COMMAND DIR");
  const std::string& command = positional[0];
  const std::string& dir = positional[1];
  if (all && command != "verify") Usage("--all applies to verify only");
  if (command == "ls") {
    if (step != kLatestStep) Usage("ls takes no --step");
    return List(dir);
  }
  if (command == "inspect") return Inspect(dir, step);
  if (command == "verify") {
    // `latest` naming no committed checkpoint is a fault of the directory: loading falls back
    // to the newest committed step, and verify says so instead of checking that one quietly.
    const absl::Status latest_ok = step == kLatestStep
                                       ? ckpt::CheckLatestPointer(*PosixFileSystem(), dir)
                                       : absl::OkStatus();
    if (!latest_ok.ok()) {
      std::printf("BAD  latest: %s\n", latest_ok.ToString().c_str());
      std::fprintf(stderr, "trident-ckpt: verify failed: %s\n", latest_ok.ToString().c_str());
    }
    if (!all) {
      if (step == kLatestStep) {
        if (!latest_ok.ok()) return 1;
        auto latest = LatestCheckpointStep(dir);
        if (!latest.ok()) return Fail(latest.status());
        step = *latest;
      }
      return VerifyOne(dir, step);
    }
    auto list = ListCheckpoints(dir);
    if (!list.ok()) return Fail(list.status());
    if (list->empty()) return Fail(absl::NotFoundError("no committed checkpoint in " + dir));
    int rc = latest_ok.ok() ? 0 : 1;
    for (const CheckpointInfo& c : *list) rc |= VerifyOne(dir, c.step);
    return rc;
  }
  Usage("unknown command '" + command + "'; expected ls, inspect, verify or export");
}

}  // namespace
}  // namespace trident

int main(int argc, char** argv) { return trident::Main(argc, argv); }
