#include "tools/trident-run/options.h"

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace trident::run {
namespace {

// Splits "--name=value" into name and value; "--name" leaves value empty.
struct FlagArg {
  absl::string_view name;
  std::optional<absl::string_view> inline_value;
};

FlagArg SplitFlag(absl::string_view arg) {
  size_t eq = arg.find('=');
  if (eq == absl::string_view::npos) return {arg, std::nullopt};
  return {arg.substr(0, eq), arg.substr(eq + 1)};
}

}  // namespace

absl::StatusOr<LaunchOptions> ParseArgs(absl::Span<const std::string> args) {
  LaunchOptions options;
  bool saw_nproc = false;
  bool saw_separator = false;
  size_t i = 0;
  // Takes the value of a flag that needs one, from "--flag=v" or from the next argument.
  auto value_of = [&](const FlagArg& flag) -> absl::StatusOr<std::string> {
    if (flag.inline_value.has_value()) return std::string(*flag.inline_value);
    if (i + 1 >= args.size() || args[i + 1] == "--") {
      return absl::InvalidArgumentError(absl::StrCat(flag.name, " needs a value"));
    }
    return args[++i];
  };

  for (; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      saw_separator = true;
      options.program.assign(args.begin() + i + 1, args.end());
      break;
    }
    FlagArg flag = SplitFlag(arg);
    if (flag.name == "--help" || flag.name == "-h") {
      options.action = LaunchOptions::Action::kHelp;
      return options;
    } else if (flag.name == "--print-params") {
      options.action = LaunchOptions::Action::kPrintParams;
      return options;
    } else if (flag.name == "--nproc" || flag.name == "--nproc-per-node") {
      // --nproc-per-node: torchrun's name; on one host the same as --nproc.
      absl::StatusOr<std::string> value = value_of(flag);
      if (!value.ok()) return value.status();
      if (!absl::SimpleAtoi(*value, &options.nproc) || options.nproc < 1 ||
          options.nproc > kMaxProcs) {
        return absl::InvalidArgumentError(absl::StrCat(
            flag.name, " must be an integer from 1 to ", kMaxProcs, ", not '", *value, "'"));
      }
      saw_nproc = true;
    } else if (flag.name == "--spares") {
      absl::StatusOr<std::string> value = value_of(flag);
      if (!value.ok()) return value.status();
      if (!absl::SimpleAtoi(*value, &options.spares) || options.spares < 0 ||
          options.spares > kMaxProcs) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--spares must be an integer from 0 to ", kMaxProcs, ", not '", *value, "'"));
      }
    } else if (flag.name == "--store") {
      absl::StatusOr<std::string> value = value_of(flag);
      if (!value.ok()) return value.status();
      if (!absl::StartsWith(*value, "tcp://") && !absl::StartsWith(*value, "file://")) {
        return absl::InvalidArgumentError(
            absl::StrCat("--store must be tcp://host:port or file:///dir, not '", *value, "'"));
      }
      options.store_url = *value;
    } else if (flag.name == "--job-id") {
      absl::StatusOr<std::string> value = value_of(flag);
      if (!value.ok()) return value.status();
      if (value->empty()) return absl::InvalidArgumentError("--job-id must not be empty");
      options.job_id = *value;
    } else if (flag.name == "--burn-in") {
      absl::StatusOr<std::string> value = value_of(flag);
      if (!value.ok()) return value.status();
      if (*value != "off" && *value != "quick" && *value != "full") {
        return absl::InvalidArgumentError(
            absl::StrCat("--burn-in must be off, quick or full, not '", *value, "'"));
      }
      options.burn_in = *value;
    } else if (absl::StartsWith(arg, "-")) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '", arg, "'"));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected argument '", arg, "': put the program after --, as in: trident-run "
          "--nproc 2 -- ", arg, " ..."));
    }
  }

  if (!saw_nproc) return absl::InvalidArgumentError("--nproc is required");
  if (!saw_separator) {
    return absl::InvalidArgumentError("missing -- before the program to run");
  }
  if (options.program.empty() || options.program[0].empty()) {
    return absl::InvalidArgumentError("no program to run after --");
  }
  return options;
}

std::string UsageText() {
  return absl::StrCat(
      "Usage: trident-run --nproc N [--spares S] [--store URL] [--job-id ID] -- PROGRAM [ARGS...]\n"
      "       trident-run --print-params | --help\n"
      "\n"
      "Starts N copies of PROGRAM as the ranks of one job on this host, prefixes each line\n"
      "they print with \"[rank K] \", and watches them. When a rank exits with a non-zero\n"
      "status or is killed by a signal, trident-run reports it at once (on stderr and in the\n"
      "store, as key job/failed/K), gives the other ranks TRIDENT_KILL_GRACE_MS to exit, then\n"
      "sends them SIGTERM and, 2 s later, SIGKILL.\n"
      "\n"
      "With --spares S it also starts S spares (output prefixed \"[spare sK] \"), which wait\n"
      "in the pool (PROGRAM must call trident::Runtime::Init, see include/trident/runtime.h).\n"
      "A rank that dies, or whose heartbeats stop for TRIDENT_HEARTBEAT_TIMEOUT_MS (it is\n"
      "then killed), is replaced by a spare under a new epoch, and the job goes on; only when\n"
      "no spare is left does the job stop as above. A spare that dies while idle shrinks the\n"
      "pool. When every rank has exited 0 the idle spares are told to exit.\n"
      "\n"
      "Flags:\n"
      "  --nproc N        number of ranks to start (1 to ", kMaxProcs, "); required\n"
      "  --nproc-per-node N  the same (torchrun's name; trident-run starts one host's ranks)\n"
      "  --spares S       hot spares to start besides the N ranks (default 0)\n"
      "  --store URL      store the ranks meet in: tcp://host:port or file:///dir; the job\n"
      "                   token is taken from TRIDENT_JOB_TOKEN. Default: trident-run hosts\n"
      "                   a TCP store on 127.0.0.1 with a fresh random job token.\n"
      "  --job-id ID      job identifier (default: $TRIDENT_JOB_ID, else a random one)\n"
      "  --burn-in LEVEL  self-test of every rank and spare before it joins (memory\n"
      "                   patterns, an exact GEMM): off, quick (default) or full (until\n"
      "                   TRIDENT_BURN_IN_MS); one that fails is not admitted\n"
      "  --print-params   print every TRIDENT_* parameter, its value and its source; exit\n"
      "  --help, -h       print this text; exit\n"
      "  --               ends trident-run's flags; PROGRAM and its arguments follow\n"
      "\n"
      "Each rank's environment is trident-run's, plus:\n"
      "  TRIDENT_RANK         0 .. N-1\n"
      "  TRIDENT_WORLD_SIZE   N\n"
      "  TRIDENT_LOCAL_RANK   rank on this host (equal to TRIDENT_RANK: one host)\n"
      "  TRIDENT_STORE        the store URL\n"
      "  TRIDENT_JOB_TOKEN    the secret that store clients present\n"
      "  TRIDENT_JOB_ID       the job identifier\n"
      "  TRIDENT_MEMBER       w0 .. w{N-1} for the ranks, s0 .. for the spares\n"
      "  TRIDENT_ROLE         worker, or spare (whose TRIDENT_RANK is -1 until promoted)\n"
      "  RANK, LOCAL_RANK     as TRIDENT_RANK and TRIDENT_LOCAL_RANK (torchrun's names); not\n"
      "                       set for a spare (it learns its rank when promoted, from\n"
      "                       trident::Runtime)\n"
      "  WORLD_SIZE, LOCAL_WORLD_SIZE   N\n"
      "  MASTER_ADDR, MASTER_PORT   127.0.0.1 and a free port, unless already set: for\n"
      "                       programs that also meet through torch.distributed's own\n"
      "                       store (env://). Trident itself meets through TRIDENT_STORE.\n"
      "  FI_TCP_IFACE=lo, FI_SOCKETS_IFACE=lo   unless already set (keeps libfabric on\n"
      "                       loopback on a single host)\n"
      "  IPATH_NO_BACKTRACE=1 unless already set (keeps the psm library that Debian's\n"
      "                       libfabric loads from taking over crash signals and writing\n"
      "                       .btr files)\n"
      "\n"
      "trident-run's own log (not the ranks') shows warnings and errors only, unless\n"
      "TRIDENT_LOG_LEVEL is set.\n"
      "\n"
      "Each rank runs in its own process group and is killed (SIGKILL) if trident-run dies.\n"
      "SIGINT and SIGTERM sent to trident-run are forwarded to every rank, followed by the\n"
      "same grace period; a second one kills the ranks at once.\n"
      "\n"
      "Exit status: 0 when every rank (of the last epoch) exited 0; 1 when a rank failed (the last line names\n"
      "the first failed rank and its cause) or trident-run could not start the job; 2 on a\n"
      "usage error; 127 when PROGRAM is not found; 128+signal when interrupted by SIGINT or\n"
      "SIGTERM.\n");
}

}  // namespace trident::run
