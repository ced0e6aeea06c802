// The in-process transport: ranks are threads of one process, messages are copies. It exists
// so that the collective algorithms can be tested fast and deterministically, without
// libfabric. A send completes at once (its bytes are buffered when no receive waits), which
// is the eager protocol of a real transport.
#ifndef TRIDENT_TRANSPORT_INPROC_INPROC_TRANSPORT_H_
#define TRIDENT_TRANSPORT_INPROC_INPROC_TRANSPORT_H_

#include <memory>
#include <vector>

#include "transport/transport.h"

namespace trident {

// Returns `size` connected transports; element r is rank r's.
std::vector<std::shared_ptr<Transport>> NewInprocTransports(int size);

}  // namespace trident

#endif  // TRIDENT_TRANSPORT_INPROC_INPROC_TRANSPORT_H_
