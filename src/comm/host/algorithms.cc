#include "comm/host/algorithms.h"

#include <algorithm>
#include <cstring>

#include "comm/host/reduce.h"
#include "common/status_macros.h"

namespace trident {
namespace {

int Mod(int a, int n) { return ((a % n) + n) % n; }

// Chunks of one block: [begin, end) element ranges of at most `chunk` elements.
struct ChunkRange {
  size_t begin, end;
};
std::vector<ChunkRange> Chunks(size_t count, size_t chunk) {
  std::vector<ChunkRange> out;
  for (size_t b = 0; b < count; b += chunk) out.push_back({b, std::min(count, b + chunk)});
  return out;
}

// At most this many chunks per block: a sender runs ahead of its receiver by up to a few
// blocks, and libfabric's shm jams for good once about 1024 messages wait unreceived at an
// endpoint (see fabric_transport.cc), so huge blocks get bigger chunks instead of more.
constexpr size_t kMaxChunksPerBlock = 64;

// Elements per pipeline chunk of a block of `block_count` elements.
size_t ChunkElems(size_t chunk_bytes, size_t esize, size_t block_count) {
  const size_t by_size = std::max<size_t>(1, chunk_bytes / esize);
  const size_t by_count = (block_count + kMaxChunksPerBlock - 1) / kMaxChunksPerBlock;
  return std::max(by_size, by_count);
}

}  // namespace

Blocks Blocks::Even(size_t count, int n) {
  Blocks b;
  size_t base = count / n, extra = count % n, off = 0;
  for (int i = 0; i < n; ++i) {
    size_t c = base + (static_cast<size_t>(i) < extra ? 1 : 0);
    b.offset.push_back(off);
    b.count.push_back(c);
    off += c;
  }
  b.max_count = base + (extra ? 1 : 0);
  return b;
}

Blocks Blocks::Uniform(size_t block_count, int n) {
  Blocks b;
  for (int i = 0; i < n; ++i) {
    b.offset.push_back(block_count * i);
    b.count.push_back(block_count);
  }
  b.max_count = block_count;
  return b;
}

absl::Status AllReduceRecursiveDoubling(Channel& ch, DType dtype, ReduceOp op, const void* in,
                                        void* out, size_t count, Scratch& scratch) {
  const int n = ch.size(), r = ch.rank();
  const size_t bytes = count * DTypeSize(dtype);
  if (out != in && bytes > 0) std::memcpy(out, in, bytes);
  char* tmp = scratch.Get(bytes);
  // Fold the ranks beyond the largest power of two into their neighbours first.
  int p = 1;
  while (p * 2 <= n) p *= 2;
  const int rem = n - p;
  int vrank;
  if (r < 2 * rem) {
    if (r % 2 == 0) {
      ASSIGN_OR_RETURN(TransportRequest * s, ch.Send(r + 1, out, bytes));
      RETURN_IF_ERROR(ch.Wait(s));
      vrank = -1;
    } else {
      ASSIGN_OR_RETURN(TransportRequest * q, ch.Recv(r - 1, tmp, bytes));
      RETURN_IF_ERROR(ch.Wait(q));
      ReduceElements(dtype, op, out, tmp, out, count);  // lower rank's data first
      vrank = r / 2;
    }
  } else {
    vrank = r - rem;
  }
  if (vrank >= 0) {
    for (int mask = 1; mask < p; mask <<= 1) {
      const int vpartner = vrank ^ mask;
      const int partner = vpartner < rem ? vpartner * 2 + 1 : vpartner + rem;
      RETURN_IF_ERROR(ch.SendRecv(partner, out, bytes, partner, tmp, bytes));
      if (vpartner < vrank) {
        ReduceElements(dtype, op, out, tmp, out, count);
      } else {
        ReduceElements(dtype, op, out, out, tmp, count);
      }
    }
  }
  if (r < 2 * rem) {
    if (r % 2 == 0) {
      ASSIGN_OR_RETURN(TransportRequest * q, ch.Recv(r + 1, out, bytes));
      RETURN_IF_ERROR(ch.Wait(q));
    } else {
      ASSIGN_OR_RETURN(TransportRequest * s, ch.Send(r - 1, out, bytes));
      RETURN_IF_ERROR(ch.Wait(s));
    }
  }
  if (op == ReduceOp::kAvg) ScaleDown(dtype, out, count, n);
  return absl::OkStatus();
}

// Ring reduce-scatter over `blocks` of `in`: at step s rank r sends block r-1-s and receives
// block r-2-s, which it reduces with its own contribution and forwards at step s+1, chunk by
// chunk, so that sending, receiving and reducing overlap. Rank r ends with block r, written
// to `result`.
static absl::Status RingReduceScatterBlocks(Channel& ch, DType dtype, ReduceOp op,
                                            const char* in, const Blocks& blocks, char* result,
                                            size_t chunk_bytes, Scratch& scratch) {
  const int n = ch.size(), r = ch.rank(), right = Mod(r + 1, n), left = Mod(r - 1, n);
  const size_t esize = DTypeSize(dtype);
  if (n == 1) {
    if (result != in) std::memcpy(result, in, blocks.count[0] * esize);
    return absl::OkStatus();
  }
  const size_t chunk = ChunkElems(chunk_bytes, esize, blocks.max_count);
  char* bufs[2];
  bufs[0] = scratch.Get(2 * blocks.max_count * esize);
  bufs[1] = bufs[0] + blocks.max_count * esize;
  std::vector<TransportRequest*> sends_from[2];

  const int first = Mod(r - 1, n);
  for (const ChunkRange& c : Chunks(blocks.count[first], chunk)) {
    RETURN_IF_ERROR(ch.Send(right, in + (blocks.offset[first] + c.begin) * esize,
                            (c.end - c.begin) * esize)
                        .status());
  }
  for (int s = 0; s < n - 1; ++s) {
    const int rb = Mod(r - 2 - s, n);
    const bool last = s == n - 2;
    char* buf = bufs[s % 2];
    for (TransportRequest* q : sends_from[s % 2]) RETURN_IF_ERROR(ch.Wait(q));
    sends_from[s % 2].clear();
    const std::vector<ChunkRange> chunks = Chunks(blocks.count[rb], chunk);
    std::vector<TransportRequest*> recvs;
    for (const ChunkRange& c : chunks) {
      ASSIGN_OR_RETURN(TransportRequest * q,
                       ch.Recv(left, buf + c.begin * esize, (c.end - c.begin) * esize));
      recvs.push_back(q);
    }
    const char* mine = in + blocks.offset[rb] * esize;
    for (size_t i = 0; i < chunks.size(); ++i) {
      const ChunkRange& c = chunks[i];
      RETURN_IF_ERROR(ch.Wait(recvs[i]));
      char* dst = (last ? result : buf) + c.begin * esize;
      ReduceElements(dtype, op, dst, mine + c.begin * esize, buf + c.begin * esize,
                     c.end - c.begin);
      if (!last) {
        ASSIGN_OR_RETURN(TransportRequest * q,
                         ch.Send(right, dst, (c.end - c.begin) * esize));
        sends_from[s % 2].push_back(q);
      }
    }
  }
  return ch.WaitAll();
}

// Ring all-gather over `blocks` of `buf`, rank r's block already in place: at step s rank r
// forwards block r-s and receives block r-s-1, chunk by chunk.
static absl::Status RingAllGatherBlocks(Channel& ch, size_t esize, char* buf,
                                        const Blocks& blocks, size_t chunk_bytes) {
  const int n = ch.size(), r = ch.rank(), right = Mod(r + 1, n), left = Mod(r - 1, n);
  if (n == 1) return absl::OkStatus();
  const size_t chunk = ChunkElems(chunk_bytes, esize, blocks.max_count);
  for (const ChunkRange& c : Chunks(blocks.count[r], chunk)) {
    RETURN_IF_ERROR(ch.Send(right, buf + (blocks.offset[r] + c.begin) * esize,
                            (c.end - c.begin) * esize)
                        .status());
  }
  for (int s = 0; s < n - 1; ++s) {
    const int rb = Mod(r - s - 1, n);
    char* base = buf + blocks.offset[rb] * esize;
    const std::vector<ChunkRange> chunks = Chunks(blocks.count[rb], chunk);
    std::vector<TransportRequest*> recvs;
    for (const ChunkRange& c : chunks) {
      ASSIGN_OR_RETURN(TransportRequest * q,
                       ch.Recv(left, base + c.begin * esize, (c.end - c.begin) * esize));
      recvs.push_back(q);
    }
    for (size_t i = 0; i < chunks.size(); ++i) {
      RETURN_IF_ERROR(ch.Wait(recvs[i]));
      if (s < n - 2) {
        const ChunkRange& c = chunks[i];
        RETURN_IF_ERROR(
            ch.Send(right, base + c.begin * esize, (c.end - c.begin) * esize).status());
      }
    }
  }
  return ch.WaitAll();
}

absl::Status AllReduceRing(Channel& ch, DType dtype, ReduceOp op, const void* in, void* out,
                           size_t count, size_t chunk_bytes, Scratch& scratch) {
  const int n = ch.size(), r = ch.rank();
  const size_t esize = DTypeSize(dtype);
  const Blocks blocks = Blocks::Even(count, n);
  char* mine = static_cast<char*>(out) + blocks.offset[r] * esize;
  RETURN_IF_ERROR(RingReduceScatterBlocks(ch, dtype, op, static_cast<const char*>(in), blocks,
                                          mine, chunk_bytes, scratch));
  if (op == ReduceOp::kAvg) ScaleDown(dtype, mine, blocks.count[r], n);
  return RingAllGatherBlocks(ch, esize, static_cast<char*>(out), blocks, chunk_bytes);
}

absl::Status ReduceScatterRing(Channel& ch, DType dtype, ReduceOp op, const void* in, void* out,
                               size_t block_count, size_t chunk_bytes, Scratch& scratch) {
  const Blocks blocks = Blocks::Uniform(block_count, ch.size());
  RETURN_IF_ERROR(RingReduceScatterBlocks(ch, dtype, op, static_cast<const char*>(in), blocks,
                                          static_cast<char*>(out), chunk_bytes, scratch));
  if (op == ReduceOp::kAvg) ScaleDown(dtype, out, block_count, ch.size());
  return absl::OkStatus();
}

absl::Status AllGatherRing(Channel& ch, DType dtype, const void* in, void* out,
                           size_t block_count, size_t chunk_bytes) {
  const size_t esize = DTypeSize(dtype);
  char* mine = static_cast<char*>(out) + ch.rank() * block_count * esize;
  if (mine != in && block_count > 0) std::memcpy(mine, in, block_count * esize);
  return RingAllGatherBlocks(ch, esize, static_cast<char*>(out),
                             Blocks::Uniform(block_count, ch.size()), chunk_bytes);
}

absl::Status BroadcastTree(Channel& ch, void* data, size_t bytes, int root,
                           size_t chunk_bytes) {
  const int n = ch.size(), vr = Mod(ch.rank() - root, n);
  char* buf = static_cast<char*>(data);
  std::vector<ChunkRange> chunks = Chunks(bytes, ChunkElems(chunk_bytes, 1, bytes));
  if (chunks.empty()) chunks.push_back({0, 0});  // zero bytes still synchronise, as one message
  // Binomial tree: the parent is vr minus its lowest set bit; children are vr + 2^k for the
  // 2^k below that bit, biggest subtree first.
  int parent = -1, mask = 1;
  while (mask < n) {
    if (vr & mask) {
      parent = Mod(vr - mask + root, n);
      break;
    }
    mask <<= 1;
  }
  std::vector<int> children;
  for (mask >>= 1; mask > 0; mask >>= 1) {
    if (vr + mask < n) children.push_back(Mod(vr + mask + root, n));
  }
  std::vector<TransportRequest*> recvs;
  if (parent >= 0) {
    for (const ChunkRange& c : chunks) {
      ASSIGN_OR_RETURN(TransportRequest * q, ch.Recv(parent, buf + c.begin, c.end - c.begin));
      recvs.push_back(q);
    }
  }
  // Forward each chunk as soon as it is here, so the levels of the tree overlap.
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (parent >= 0) RETURN_IF_ERROR(ch.Wait(recvs[i]));
    for (int child : children) {
      RETURN_IF_ERROR(
          ch.Send(child, buf + chunks[i].begin, chunks[i].end - chunks[i].begin).status());
    }
  }
  return ch.WaitAll();
}

absl::Status ReduceTree(Channel& ch, DType dtype, ReduceOp op, const void* in, void* out,
                        size_t count, int root, Scratch& scratch) {
  const int n = ch.size(), vr = Mod(ch.rank() - root, n);
  const size_t bytes = count * DTypeSize(dtype);
  char* acc = vr == 0 ? static_cast<char*>(out) : scratch.Get(2 * bytes);
  char* tmp = vr == 0 ? scratch.Get(bytes) : acc + bytes;
  if (acc != in && bytes > 0) std::memcpy(acc, in, bytes);
  for (int mask = 1; mask < n; mask <<= 1) {
    if (vr & mask) {
      ASSIGN_OR_RETURN(TransportRequest * s, ch.Send(Mod(vr - mask + root, n), acc, bytes));
      return ch.Wait(s);
    }
    if (vr + mask < n) {
      ASSIGN_OR_RETURN(TransportRequest * q, ch.Recv(Mod(vr + mask + root, n), tmp, bytes));
      RETURN_IF_ERROR(ch.Wait(q));
      ReduceElements(dtype, op, acc, acc, tmp, count);
    }
  }
  if (op == ReduceOp::kAvg) ScaleDown(dtype, out, count, n);
  return absl::OkStatus();
}

absl::Status ReduceRing(Channel& ch, DType dtype, ReduceOp op, const void* in, void* out,
                        size_t count, int root, size_t chunk_bytes, Scratch& scratch) {
  const int n = ch.size(), r = ch.rank();
  const size_t esize = DTypeSize(dtype);
  const Blocks blocks = Blocks::Even(count, n);
  // Non-root ranks need their final block outside the ring's two working buffers.
  char* result;
  if (r == root) {
    result = static_cast<char*>(out) + blocks.offset[r] * esize;
  } else {
    result = scratch.Get((2 + 1) * blocks.max_count * esize) + 2 * blocks.max_count * esize;
  }
  RETURN_IF_ERROR(RingReduceScatterBlocks(ch, dtype, op, static_cast<const char*>(in), blocks,
                                          result, chunk_bytes, scratch));
  if (op == ReduceOp::kAvg) ScaleDown(dtype, result, blocks.count[r], n);
  if (r != root) {
    ASSIGN_OR_RETURN(TransportRequest * s, ch.Send(root, result, blocks.count[r] * esize));
    return ch.Wait(s);
  }
  for (int p = 0; p < n; ++p) {
    if (p == r) continue;
    RETURN_IF_ERROR(ch.Recv(p, static_cast<char*>(out) + blocks.offset[p] * esize,
                            blocks.count[p] * esize)
                        .status());
  }
  return ch.WaitAll();
}

absl::Status AllToAllPairwise(Channel& ch, DType dtype, const void* in, void* out,
                              size_t block_count, Scratch& scratch) {
  const int n = ch.size(), r = ch.rank();
  const size_t block = block_count * DTypeSize(dtype);
  const char* src = static_cast<const char*>(in);
  if (in == out && n > 1) {  // in place: send from a copy
    char* copy = scratch.Get(block * n);
    std::memcpy(copy, in, block * n);
    src = copy;
  }
  char* dst = static_cast<char*>(out);
  if (dst + r * block != src + r * block && block > 0) {
    std::memcpy(dst + r * block, src + r * block, block);
  }
  for (int s = 1; s < n; ++s) {
    const int from = Mod(r - s, n);
    RETURN_IF_ERROR(ch.Recv(from, dst + from * block, block).status());
  }
  for (int s = 1; s < n; ++s) {
    const int to = Mod(r + s, n);
    RETURN_IF_ERROR(ch.Send(to, src + to * block, block).status());
  }
  return ch.WaitAll();
}

absl::Status BarrierDissemination(Channel& ch) {
  const int n = ch.size(), r = ch.rank();
  char token = 0, sink[1];
  for (int k = 1; k < n; k <<= 1) {
    RETURN_IF_ERROR(ch.SendRecv(Mod(r + k, n), &token, 1, Mod(r - k, n), sink, 1));
  }
  return absl::OkStatus();
}

}  // namespace trident
