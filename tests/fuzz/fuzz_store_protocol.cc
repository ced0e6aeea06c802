// Fuzzes the store server's side of the wire protocol: any bytes as what a peer sends on one
// connection. Frames are cut as the server cuts them (u32 length, its limits before and after
// the hello), the first is decoded as a hello and the rest as requests, which are applied to
// the server's key-value map; the first frame the server would refuse ends the input, as the
// server closes the connection there.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "store/kv_map.h"
#include "store/tcp_store_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace trident::store_internal;
  absl::string_view in(reinterpret_cast<const char*>(data), size);
  KvMap map;
  bool authed = false;
  while (in.size() >= 4) {
    const uint32_t len = LoadU32(in.data());
    const size_t limit = authed ? kMaxFrameBytes : kMaxHelloBytes;
    if (len == 0 || len > limit || in.size() - 4 < len) break;
    const absl::string_view body = in.substr(4, len);
    in.remove_prefix(4 + static_cast<size_t>(len));
    if (!authed) {
      absl::StatusOr<Hello> hello = DecodeHello(body);
      if (!hello.ok() || hello->version != kProtocolVersion) break;
      (void)ConstantTimeEquals(hello->token, "fuzz-token");
      authed = true;
      continue;
    }
    absl::StatusOr<Request> q = DecodeRequest(body);
    if (!q.ok()) break;
    switch (q->op) {
      case Op::kSet:
        map.Set(q->key, q->value);
        break;
      case Op::kGet:
      case Op::kTryGet:
        if (map.Find(q->key) == nullptr) {
          (void)MissingKeysError(OpName(q->op), {std::string(q->key)});
        }
        break;
      case Op::kAdd:
        (void)map.Add(q->key, q->delta);
        break;
      case Op::kCompareSet:
        (void)map.CompareSet(q->key, q->expected, q->value);
        break;
      case Op::kWait: {
        std::vector<std::string> keys(q->keys.begin(), q->keys.end());
        (void)MissingKeysError("Wait", map.Missing(keys));
        break;
      }
      case Op::kDelete:
        (void)map.Delete(q->key);
        break;
      case Op::kListPrefix: {
        FrameWriter w;
        w.U8(0).Bytes("");
        for (const std::string& key : map.ListPrefix(q->key)) w.Bytes(key);
        (void)std::move(w).Finish();
        break;
      }
      case Op::kHello:
        __builtin_trap();  // DecodeRequest refuses a second hello
    }
  }
  return 0;
}
