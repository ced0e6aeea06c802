#include "tools/trident-run/output_relay.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "common/check.h"
#include "common/logging.h"

namespace trident::run {
namespace {

constexpr size_t kReadChunk = 64 * 1024;
// In the final drain, at most this many reads per pipe: a grandchild that keeps writing
// must not keep trident-run from exiting.
constexpr int kFinalDrainReads = 64;

}  // namespace

OutputWriter::OutputWriter(int stdout_fd, int stderr_fd) : fds_{stdout_fd, stderr_fd} {}

void OutputWriter::Write(Stream stream, absl::string_view bytes) {
  const int i = static_cast<int>(stream);
  absl::MutexLock lock(&mu_);
  if (broken_[i]) return;
  while (!bytes.empty()) {
    ssize_t n = ::write(fds_[i], bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        // Our stdout was handed to us non-blocking; wait until it takes more.
        pollfd pfd{fds_[i], POLLOUT, 0};
        ::poll(&pfd, 1, 100);
        continue;
      }
      broken_[i] = true;  // EPIPE, EBADF, ...: nobody can read this stream any more
      return;
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

void LineSplitter::Feed(absl::string_view data, std::string* out) {
  while (!data.empty()) {
    size_t nl = data.find('\n');
    if (nl == absl::string_view::npos) {
      size_t room = kMaxLineBytes - partial_.size();
      if (data.size() < room) {
        partial_.append(data.data(), data.size());
        return;
      }
      // The line is too long: emit what fits as a line of its own.
      partial_.append(data.data(), room);
      data.remove_prefix(room);
      Flush(out);
      continue;
    }
    out->append(prefix_);
    out->append(partial_);
    out->append(data.data(), nl + 1);
    partial_.clear();
    data.remove_prefix(nl + 1);
  }
}

void LineSplitter::Flush(std::string* out) {
  if (partial_.empty()) return;
  out->append(prefix_);
  out->append(partial_);
  out->push_back('\n');
  partial_.clear();
}

OutputRelay::OutputRelay(OutputWriter* writer) : writer_(writer) {
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  TRIDENT_CHECK(wake_fd_ >= 0) << "eventfd: errno " << errno;
}

OutputRelay::~OutputRelay() {
  Finish(absl::InfinitePast());
  ::close(wake_fd_);
}

void OutputRelay::Add(int fd, std::string prefix, Stream stream, int owner) {
  TRIDENT_CHECK(!thread_.joinable() && !finished_) << "OutputRelay::Add after Start";
  int flags = ::fcntl(fd, F_GETFL);
  TRIDENT_CHECK(flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0)
      << "fcntl(O_NONBLOCK) on fd " << fd << ": errno " << errno;
  absl::MutexLock lock(&sources_mu_);
  sources_.push_back(Source{fd, stream, owner, LineSplitter(std::move(prefix))});
}

void OutputRelay::Start() {
  TRIDENT_CHECK(!thread_.joinable() && !finished_) << "OutputRelay::Start twice";
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "trident-relay");
    Loop();
  });
}

void OutputRelay::CatchUp(int owner) {
  absl::MutexLock lock(&sources_mu_);
  for (Source& source : sources_) {
    // The relay thread may be poll()ing this fd: leave closing it to that thread.
    if (source.owner == owner && source.fd >= 0) DrainAll(source, /*close_at_eof=*/false);
  }
}

void OutputRelay::Finish(absl::Time deadline) {
  if (finished_) return;
  finished_ = true;
  {
    absl::MutexLock lock(&mu_);
    stop_at_ = deadline;
  }
  if (thread_.joinable()) {
    uint64_t one = 1;
    ssize_t n = ::write(wake_fd_, &one, sizeof(one));
    (void)n;  // EAGAIN: already awake
    thread_.join();
  } else {
    absl::MutexLock lock(&sources_mu_);  // never started: drain on this thread
    for (Source& source : sources_) {
      if (source.fd < 0) continue;
      DrainAll(source, /*close_at_eof=*/true);
      Close(source);
    }
  }
}

bool OutputRelay::Drain(Source& source, bool close_at_eof) {
  if (source.eof) {
    if (close_at_eof) Close(source);
    return false;
  }
  char buf[kReadChunk];
  ssize_t n = ::read(source.fd, buf, sizeof(buf));
  if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
    return errno == EINTR;  // EINTR: try again; EAGAIN: nothing more for now
  }
  std::string out;
  if (n <= 0) {
    if (n < 0) TLOG(warn, "reading a child's output (fd {}): errno {}", source.fd, errno);
    source.eof = true;
    source.splitter.Flush(&out);
    if (!out.empty()) writer_->Write(source.stream, out);
    if (close_at_eof) Close(source);
    return false;
  }
  source.splitter.Feed(absl::string_view(buf, static_cast<size_t>(n)), &out);
  if (!out.empty()) writer_->Write(source.stream, out);
  return true;
}

void OutputRelay::DrainAll(Source& source, bool close_at_eof) {
  for (int i = 0; i < kFinalDrainReads && source.fd >= 0 && Drain(source, close_at_eof); ++i) {
  }
}

void OutputRelay::Close(Source& source) {
  if (source.fd < 0) return;
  std::string out;
  source.splitter.Flush(&out);
  if (!out.empty()) writer_->Write(source.stream, out);
  ::close(source.fd);
  source.fd = -1;
}

void OutputRelay::Loop() {
  std::vector<pollfd> pfds;
  std::vector<Source*> polled;
  while (true) {
    pfds.clear();
    polled.clear();
    {
      absl::MutexLock lock(&sources_mu_);
      for (Source& source : sources_) {
        if (source.fd < 0) continue;
        pfds.push_back(pollfd{source.fd, POLLIN, 0});
        polled.push_back(&source);
      }
    }
    if (polled.empty()) return;  // every pipe reached EOF
    pfds.push_back(pollfd{wake_fd_, POLLIN, 0});

    absl::Time stop_at;
    {
      absl::MutexLock lock(&mu_);
      stop_at = stop_at_;
    }
    const absl::Time now = absl::Now();
    if (now >= stop_at) {
      // Past the deadline: take what is already in the pipes and stop.
      absl::MutexLock lock(&sources_mu_);
      for (Source* source : polled) {
        DrainAll(*source, /*close_at_eof=*/true);
        Close(*source);
      }
      return;
    }
    int timeout_ms = -1;
    if (stop_at != absl::InfiniteFuture()) {
      timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(absl::Ceil(stop_at - now,
                                                                         absl::Milliseconds(1))));
    }
    int ready = ::poll(pfds.data(), pfds.size(), timeout_ms);
    if (ready < 0) {
      TRIDENT_CHECK(errno == EINTR) << "poll over child pipes: errno " << errno;
      continue;
    }
    {
      absl::MutexLock lock(&sources_mu_);
      for (size_t i = 0; i < polled.size(); ++i) {
        // One read per wakeup keeps one chatty child from starving the others; POLLHUP with
        // data left is read first, and EOF comes on a later round.
        if (pfds[i].revents != 0 && polled[i]->fd >= 0) Drain(*polled[i], /*close_at_eof=*/true);
      }
    }
    if (pfds.back().revents != 0) {
      uint64_t value;
      ssize_t n = ::read(wake_fd_, &value, sizeof(value));
      (void)n;
    }
  }
}

}  // namespace trident::run
